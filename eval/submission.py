"""Challenge prediction files: written from a run, and scored against the annotations by the same code whoever wrote
them (`emoreason eval submit`, `emoreason eval score`).

ABAW (EXPR, AU, VA on Aff-Wild2; the 6th and 8th editions' test-set sample files, as participants' code reads
them, since the organisers' instructions are distributed with the test set rather than published): one text file
per challenge covering every video, a header line, then one line per frame of each video's full frame list,
frames numbered from 1:

    image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other     video/00001.jpg,4
    image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26         video/00001.jpg,0,1,...,0
    image_location,valence,arousal                                                 video/00001.jpg,0.250000,-0.125000

EXPR is one class index 0-7; AU twelve 0/1 values; VA two numbers in [-1, 1]. Every frame of the list appears,
with or without a face crop: a frame without a prediction takes the nearest predicted frame of its video (ties:
the earlier), as teams are told to fill them. The frame list comes from the organisers' sample file (its
`video/00001.jpg,` lines, in its order) or, on the validation set, from the annotation files (line i = frame i).

BAH (the Ambivalence/Hesitancy challenge's video-level file, as its `validate_submission.py` checks it): no
header, one line per video of the reference split file, in its order: `video_path,p0,p1,prediction` with p0 + p1
exactly 1 and the prediction 0 or 1 (1: A/H present).
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from eval.files import EvalFileError, check_annotation_file, numbered_lines, text_lines, whole_number
from mllm.labels import ABAW_AUS, label_space

TASKS = ("abaw_expr", "abaw_au", "abaw_va", "bah")
HEADERS = {
    "expr": ["image_location", *label_space("abaw_expr")],
    "au": ["image_location", *ABAW_AUS],
    "va": ["image_location", "valence", "arousal"],
}


# ---------------------------------------------------------------------------------------------------------------
# Frame lists


def frames_from_annotations(folder, task: str) -> dict[str, int]:
    """Each video's frame count from its annotation file in `folder` (`<video>.txt`, a header, line i = frame i)."""
    files = _annotation_files(folder)
    return {path.stem: len(_annotation(path, task)) for path in files}


def frames_from_sample(path) -> dict[str, array]:
    """The organisers' sample file: each video's frame numbers, in the file's order (`video/00001.jpg,` lines),
    8 bytes a frame."""
    out: dict[str, array] = {}
    for number, text in text_lines(path, "sample file"):
        if number == 1 and text.lower().startswith("image_location"):
            continue
        video, frame = _location(text.split(",", 1)[0], path, number)
        out.setdefault(video, array("q")).append(frame)
    if not out:
        raise EvalFileError(path, None, None, "no frame lines (<video>/<frame>.jpg,...)")
    return out


def _location(text: str, path, number: int) -> tuple[str, int]:
    video, sep, name = text.strip().rpartition("/")
    stem = name[:-4] if name.lower().endswith(".jpg") else ""
    if not sep or not video or not whole_number(stem, digits=9) or int(stem) < 1:
        reason = f"expected <video>/<frame>.jpg with frames numbered from 1 (at most 9 digits), got {text[:80]!r}"
        raise EvalFileError(path, number, "image_location", reason)
    return video, int(stem)


def _annotation_files(folder) -> list[Path]:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of <video>.txt annotation files")
    files = sorted(p for p in Path(folder).glob("*.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no <video>.txt annotation files")
    return files


def _annotation(path, task: str) -> list:
    """One video's per-frame labels (None: invalid frame), read by the data builders' reader once the file is known
    to be text of bounded lines (that reader holds the whole file)."""
    from data_builders.abaw import read_annotation
    from data_builders.common import BuildOptions, BuildReport

    check_annotation_file(path)
    values, _ = read_annotation(Path(path), task, BuildOptions(root=Path(path).parent), BuildReport())
    return values


# ---------------------------------------------------------------------------------------------------------------
# ABAW


def _format(task: str, value) -> str:
    if task == "expr":
        return str(int(value))
    if task == "au":
        return ",".join(str(int(v)) for v in value)
    valence, arousal = (min(1.0, max(-1.0, float(v))) for v in value)
    return f"{valence:.6f},{arousal:.6f}"


def write_abaw(path, task: str, frames, frame_lists: dict) -> dict:
    """Write the submission for `frames` (`eval.frames.Frames` of a run) over `frame_lists` ({video: frame count
    or frame numbers}, in the order to write) to `path`, claimed with `mllm.outputs.claim_output_file`. Returns
    counts: rows, filled (no prediction for the frame), videos without any prediction (filled with class 0 / no AU
    / (0, 0))."""
    from mllm.outputs import output_file

    by_video: dict[str, tuple[np.ndarray, list]] = {}
    names = np.asarray(frames.videos)
    for video in dict.fromkeys(frames.videos):
        mask = names == video
        by_video[video] = (frames.frames[mask], list(frames.pred[mask]))
    default = {"expr": 0, "au": [0] * len(ABAW_AUS), "va": [0.0, 0.0]}[task]
    counts = {"rows": 0, "filled": 0, "videos_without_prediction": 0}
    with output_file(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(",".join(HEADERS[task]) + "\n")
        for video, listed in frame_lists.items():
            wanted = np.arange(1, listed + 1) if isinstance(listed, int) else np.asarray(listed, dtype=np.int64)
            known, values = by_video.get(video, (np.zeros(0, np.int64), []))
            if not len(known):
                counts["videos_without_prediction"] += 1
            for frame in wanted:
                at = int(np.searchsorted(known, frame))
                if at < len(known) and known[at] == frame:
                    value = values[at]
                elif len(known):
                    counts["filled"] += 1
                    left, right = max(at - 1, 0), min(at, len(known) - 1)
                    value = values[right if abs(known[right] - frame) < abs(frame - known[left]) else left]
                else:
                    counts["filled"] += 1
                    value = default
                out.write(f"{video}/{int(frame):05d}.jpg,{_format(task, value)}\n")
                counts["rows"] += 1
        out.flush()
        os.fsync(out.fileno())
    return counts


def _abaw_value(task: str, fields: list[str], path, number: int):
    """A line's prediction, each field checked, a bad one named by its column."""
    if task == "expr":
        text = fields[0].strip()
        if not (whole_number(text, digits=2) and int(text) < len(HEADERS["expr"]) - 1):
            raise EvalFileError(path, number, "expression", f"not a valid EXPR prediction: a class index 0-"
                                f"{len(HEADERS['expr']) - 2}, got {text[:40]!r}")  # fmt: skip
        return int(text)
    if task == "au":
        for name, text in zip(ABAW_AUS, fields, strict=True):
            if text.strip() not in ("0", "1"):
                raise EvalFileError(path, number, name, f"not a valid AU prediction: 0 or 1, got {text[:40]!r}")
        return [int(v) for v in fields]
    values = []
    for name, text in zip(("valence", "arousal"), fields, strict=True):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and -1 <= value <= 1):
            raise EvalFileError(
                path, number, name, f"not a valid VA prediction: a number in [-1, 1], got {text[:40]!r}"
            )
        values.append(value)
    return values


def abaw_lines(path, task: str):
    """(line number, video, frame, value) of each prediction line of an ABAW file, read line by line; the header
    and every field checked, a problem named by file, line and column."""
    width = {"expr": 1, "au": len(ABAW_AUS), "va": 2}[task]
    lines = numbered_lines(path, "prediction file")
    first = next(lines, None)
    if first is None or [h.strip() for h in first[1].split(",")] != HEADERS[task]:
        raise EvalFileError(path, 1, "header", f"must be {','.join(HEADERS[task])}")
    for number, line, _ in lines:
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if len(fields) != width + 1:
            names = ",".join(HEADERS[task]) if task != "expr" else "image_location,class index"
            raise EvalFileError(path, number, None, f"expected {width + 1} comma-separated fields ({names}), "
                                f"got {len(fields)}")  # fmt: skip
        video, frame = _location(fields[0], path, number)
        yield number, video, frame, _abaw_value(task, fields[1:], path, number)


def read_abaw(path, task: str) -> dict[str, dict[int, object]]:
    """A submission file: {video: {frame: value}}; every problem is one error naming the file and line."""
    out: dict[str, dict[int, object]] = {}
    for number, video, frame, value in abaw_lines(path, task):
        if frame in out.setdefault(video, {}):
            raise EvalFileError(path, number, "image_location", f"{video}/{frame:05d}.jpg appears twice")
        out[video][frame] = value
    return out


def score_abaw(task: str, predictions_path, annotations) -> dict:
    """The challenge's metric for a submission against an annotation folder: every annotated frame (valid or not)
    of every annotated video must have a prediction line. The submission is read line by line into arrays the size
    of the annotations; lines of other videos or frames are checked, not kept."""
    from eval import metrics as m

    invalid = {"expr": -1, "au": [-1] * len(ABAW_AUS), "va": [-5.0, -5.0]}[task]
    shape = {"expr": (), "au": (len(ABAW_AUS),), "va": (2,)}[task]
    dtype = np.float64 if task == "va" else np.int64
    truth, pred, line_of, files = {}, {}, {}, {}
    for path in _annotation_files(annotations):
        values = _annotation(path, task)
        truth[path.stem] = np.array([invalid if v is None else v for v in values], dtype).reshape(-1, *shape)
        pred[path.stem] = np.zeros((len(values), *shape), dtype)
        line_of[path.stem] = np.zeros(len(values), np.int64)
        files[path.stem] = path
    for number, video, frame, value in abaw_lines(predictions_path, task):
        lines = line_of.get(video)
        if lines is None or frame > len(lines):
            continue  # not annotated: not scored
        if lines[frame - 1]:
            reason = f"{video}/{frame:05d}.jpg appears twice (first at line {lines[frame - 1]})"
            raise EvalFileError(predictions_path, number, "image_location", reason)
        lines[frame - 1], pred[video][frame - 1] = number, value
    for video, lines in line_of.items():
        if not lines.any():
            raise EvalFileError(predictions_path, None, None, f"no prediction for video {video} ({files[video]})")
        missing = np.flatnonzero(lines == 0)
        if len(missing):
            raise EvalFileError(predictions_path, None, None, f"{len(missing)} frames of {video} have no line (first: "
                                f"{video}/{missing[0] + 1:05d}.jpg)")  # fmt: skip
    true_all, pred_all = np.concatenate(list(truth.values())), np.concatenate(list(pred.values()))
    valid = true_all != invalid[0] if task != "expr" else true_all != invalid
    if not (valid.any() if task != "va" else np.all(valid, axis=1).any()):
        raise ValueError(f"{annotations}: every annotated frame is marked invalid; nothing to score")
    if task == "expr":
        value, frames = m.expr_f1(true_all, pred_all)
        return {"expr_macro_f1": value, "frames_scored": frames}
    if task == "au":
        value, _ = m.au_f1(true_all, pred_all)
        return {"au_mean_f1": value, "frames_scored": int(np.sum(np.all(true_all != -1, axis=1)))}
    return dict(m.va_ccc(true_all, pred_all))


# ---------------------------------------------------------------------------------------------------------------
# BAH


def _probabilities(p_present: float) -> tuple[str, str]:
    """p0 and p1 written with 4 decimals so that, read back, p0 + p1 == 1 exactly (the validator's check)."""
    p1 = round(min(1.0, max(0.0, p_present)), 4)
    for candidate in (p1, p1 + 0.0001, p1 - 0.0001, p1 + 0.0002, p1 - 0.0002):
        if 0 <= candidate <= 1:
            a, b = f"{1 - candidate:.4f}", f"{candidate:.4f}"
            if float(a) + float(b) == 1.0:
                return a, b
    raise ValueError(f"no 4-decimal pair sums exactly to 1 near {p_present}")  # never seen: every pair tested


def reference_lines(path):
    """(line number, video path, label) of each line of the BAH split file (`video_path,label,transcript`)."""
    for number, text in text_lines(path, "split file"):
        fields = text.split(",", 2)
        if len(fields) < 2 or fields[1].strip() not in ("0", "1"):
            raise EvalFileError(path, number, "label", "expected video_path,label[,transcript] with label 0 or 1")
        yield number, fields[0].strip(), int(fields[1])


def reference_videos(path) -> list[tuple[str, int]]:
    """The BAH split file: (video path, label) per line, in order."""
    out = [(video, label) for _, video, label in reference_lines(path)]
    if not out:
        raise EvalFileError(path, None, None, "no video line (video_path,label,transcript)")
    return out


def write_bah(path, videos: list[str], p_present: dict[str, float], predicted: dict[str, int]) -> dict:
    """One line per reference video; a video without an answer gets p = 0.5 and prediction 0 (counted). `path` is
    claimed with `mllm.outputs.claim_output_file`."""
    from mllm.outputs import output_file

    missing = 0
    with output_file(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for video in videos:
            if video not in predicted:
                missing += 1
            p0, p1 = _probabilities(p_present.get(video, 0.5))
            out.write(f"{video},{p0},{p1},{predicted.get(video, 0)}\n")
        out.flush()
        os.fsync(out.fileno())
    return {"rows": len(videos), "videos_without_prediction": missing}


def _unit(text: str, path, number: int, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise EvalFileError(path, number, name, f"must be a probability in [0, 1], got {text[:40]!r}")
    return value


def bah_lines(path):
    """(line number, video, p(present) or NaN, prediction) of each line of a BAH file, read line by line."""
    for number, text in text_lines(path, "prediction file"):
        fields = text.split(",")
        if len(fields) not in (2, 4):
            raise EvalFileError(path, number, None, f"expected video_path,prediction or video_path,p0,p1,prediction, "
                                f"got {len(fields)} fields")  # fmt: skip
        if fields[-1].strip() not in ("0", "1"):
            raise EvalFileError(path, number, "prediction", f"must be 0 or 1, got {fields[-1][:40]!r}")
        p1 = float("nan")
        if len(fields) == 4:
            p0, p1 = _unit(fields[1], path, number, "p0"), _unit(fields[2], path, number, "p1")
            if p0 + p1 != 1.0:
                raise EvalFileError(path, number, "p0,p1", f"must sum exactly to 1, got {fields[1]} + {fields[2]}")
        yield number, fields[0].strip(), p1, int(fields[-1])


def read_bah(path) -> list[tuple[str, float, int]]:
    return [(video, p1, prediction) for _, video, p1, prediction in bah_lines(path)]


def bah_threshold_ap(true: np.ndarray, p_present: np.ndarray) -> float:
    """Average precision as BAH's own evaluation computes it: precision and recall at thresholds 0, 0.001, ...,
    0.999 on p(present), and the trapezoid area under precision against recall. (It differs from the step sum of
    `eval.metrics.average_precision`; both are reported.)"""
    thresholds = np.arange(0, 1, 0.001)
    precision, recall = [], []
    positives = max(1, int(np.sum(true == 1)))
    for t in thresholds:
        predicted = p_present >= t
        tp = int(np.sum(predicted & (true == 1)))
        precision.append(tp / int(predicted.sum()) if predicted.any() else 0.0)  # none predicted: 0, as sklearn
        recall.append(tp / positives)
    # In threshold order recall never rises: the area is taken along that order (ties in recall keep their
    # neighbours), and is negative for a falling x.
    return float(-np.trapezoid(precision, recall))


def score_bah(predictions_path, reference_path) -> dict:
    """The BAH metrics of a prediction file whose lines are the reference's videos, in its order (read line by
    line: a line past the reference's count is refused, so memory follows the reference)."""
    from eval import metrics as m

    reference = reference_videos(reference_path)
    pred, probabilities = [], []
    for number, video, p1, prediction in bah_lines(predictions_path):
        at = len(pred)
        if at >= len(reference):
            reason = f"one line more than the {len(reference)} videos of {reference_path}"
            raise EvalFileError(predictions_path, number, "video_path", f"{reason}; the videos must be those of it, "
                                "in its order")  # fmt: skip
        if video != reference[at][0]:
            raise EvalFileError(predictions_path, number, "video_path", f"{video[:80]!r} where {reference_path} has "
                                f"{reference[at][0][:80]!r} (video {at + 1}); the videos must be those of it, in its "
                                "order")  # fmt: skip
        pred.append(prediction)
        probabilities.append(p1)
    if len(pred) < len(reference):
        raise EvalFileError(predictions_path, None, None, f"{len(pred)} lines for the {len(reference)} videos of "
                            f"{reference_path} (first missing: {reference[len(pred)][0]}); the videos must be those "
                            "of it, in its order")  # fmt: skip
    true = np.array([label for _, label in reference])
    pred, probabilities = np.array(pred), np.array(probabilities)
    has_scores = bool(np.all(np.isfinite(probabilities))) and bool(true.any())
    result = m.bah_scores(true, pred, probabilities if has_scores else None)
    if has_scores:
        result["ap_present_thresholds"] = bah_threshold_ap(true, probabilities)
    return result


# ---------------------------------------------------------------------------------------------------------------
# From a run


def bah_video_answers(rows, predictions: dict) -> tuple[dict[str, float], dict[str, int]]:
    """Video-level BAH answers by video stem: p(present) from the answer's log-probability, and the prediction."""
    import math

    probabilities, predicted = {}, {}
    for row in rows:
        p = predictions.get(row["id"])
        if row["frame_indices"] or row["start_s"] != -1 or p is None or not p.get("ok"):
            continue
        present = p["ambivalence_hesitancy"] == "present"
        chosen = math.exp(p["answer_logprob"]) if p.get("answer_logprob") is not None else 1.0
        stem = row["id"].rsplit("/", 1)[-1]
        probabilities[stem] = chosen if present else 1.0 - chosen
        predicted[stem] = 1 if present else 0
    return probabilities, predicted
