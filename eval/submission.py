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

import numpy as np

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
    from pathlib import Path

    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder}: no <video>.txt annotation files")
    return {path.stem: len(_annotation(path, task)) for path in files}


def frames_from_sample(path) -> dict[str, list[int]]:
    """The organisers' sample file: each video's frame numbers, in the file's order (`video/00001.jpg,` lines)."""
    out: dict[str, list[int]] = {}
    for number, text in _lines(path):
        if number == 1 and text.lower().startswith("image_location"):
            continue
        video, frame = _location(text.split(",", 1)[0], path, number)
        out.setdefault(video, []).append(frame)
    if not out:
        raise ValueError(f"{path}: no frame lines")
    return out


def _location(text: str, path, number: int) -> tuple[str, int]:
    video, sep, name = text.strip().rpartition("/")
    stem = name[:-4] if name.lower().endswith(".jpg") else ""
    if not sep or not video or not stem.isdigit() or int(stem) < 1:
        raise ValueError(f"{path}:{number}: expected <video>/<frame>.jpg with frames numbered from 1, got {text!r}")
    return video, int(stem)


def _annotation(path, task: str) -> list:
    from data_builders.abaw import read_annotation
    from data_builders.common import BuildOptions, BuildReport

    values, _ = read_annotation(path, task, BuildOptions(root=path.parent), BuildReport())
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
    or frame numbers}, in the order to write). Returns counts: rows, filled (no prediction for the frame), videos
    without any prediction (filled with class 0 / no AU / (0, 0))."""
    from mllm.outputs import atomic_path

    by_video: dict[str, tuple[np.ndarray, list]] = {}
    names = np.asarray(frames.videos)
    for video in dict.fromkeys(frames.videos):
        mask = names == video
        by_video[video] = (frames.frames[mask], list(frames.pred[mask]))
    default = {"expr": 0, "au": [0] * len(ABAW_AUS), "va": [0.0, 0.0]}[task]
    counts = {"rows": 0, "filled": 0, "videos_without_prediction": 0}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
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
    return counts


def read_abaw(path, task: str) -> dict[str, dict[int, object]]:
    """A submission file: {video: {frame: value}}; every problem is one error naming the file and line."""
    out: dict[str, dict[int, object]] = {}
    width = {"expr": 1, "au": len(ABAW_AUS), "va": 2}[task]
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip()
        if [h.strip() for h in header.split(",")] != HEADERS[task]:
            raise ValueError(f"{path}:1: the header must be {','.join(HEADERS[task])}")
        for number, line in enumerate(f, start=2):
            text = line.strip()
            if not text:
                continue
            fields = text.split(",")
            if len(fields) != width + 1:
                raise ValueError(f"{path}:{number}: expected {width + 1} comma-separated fields, got {len(fields)}")
            video, frame = _location(fields[0], path, number)
            try:
                if task == "expr":
                    value = int(fields[1])
                    ok = 0 <= value < len(HEADERS["expr"]) - 1
                elif task == "au":
                    value = [int(v) for v in fields[1:]]
                    ok = all(v in (0, 1) for v in value)
                else:
                    value = [float(v) for v in fields[1:]]
                    ok = all(np.isfinite(v) and -1 <= v <= 1 for v in value)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{path}:{number}: not a valid {task.upper()} prediction: {text!r}")
            if frame in out.setdefault(video, {}):
                raise ValueError(f"{path}:{number}: {video}/{frame:05d}.jpg appears twice")
            out[video][frame] = value
    return out


def score_abaw(task: str, predictions_path, annotations) -> dict:
    """The challenge's metric for a submission against an annotation folder: every annotated frame (valid or not)
    of every annotated video must have a prediction line."""
    from pathlib import Path

    from eval import metrics as m

    predicted = read_abaw(predictions_path, task)
    truth, pred = [], []
    for path in sorted(Path(annotations).glob("*.txt")):
        values = _annotation(path, task)
        lines = predicted.get(path.stem)
        if lines is None:
            raise ValueError(f"{predictions_path}: no prediction for video {path.stem} ({path})")
        missing = [i for i in range(1, len(values) + 1) if i not in lines]
        if missing:
            raise ValueError(f"{predictions_path}: {len(missing)} frames of {path.stem} have no line (first: "
                             f"{path.stem}/{missing[0]:05d}.jpg)")  # fmt: skip
        invalid = {"expr": -1, "au": [-1] * len(ABAW_AUS), "va": [-5.0, -5.0]}[task]
        for i, value in enumerate(values, start=1):
            truth.append(invalid if value is None else value)
            pred.append(lines[i])
    if not truth:
        raise FileNotFoundError(f"{annotations}: no <video>.txt annotation files")
    if task == "expr":
        value, frames = m.expr_f1(np.array(truth), np.array(pred))
        return {"expr_macro_f1": value, "frames_scored": frames}
    if task == "au":
        truth_array = np.array(truth)
        value, _ = m.au_f1(truth_array, np.array(pred))
        return {"au_mean_f1": value, "frames_scored": int(np.sum(np.all(truth_array != -1, axis=1)))}
    return {k: v for k, v in m.va_ccc(np.array(truth, float), np.array(pred, float)).items()}


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


def _lines(path):
    """(line number, stripped text) of each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.strip()


def reference_videos(path) -> list[tuple[str, int]]:
    """The BAH split file: (video path, label) per line, in order (`video_path,label,transcript`)."""
    out = []
    for number, text in _lines(path):
        fields = text.split(",", 2)
        if len(fields) < 2 or fields[1].strip() not in ("0", "1"):
            raise ValueError(f"{path}:{number}: expected video_path,label[,transcript] with label 0 or 1")
        out.append((fields[0].strip(), int(fields[1])))
    return out


def write_bah(path, videos: list[str], p_present: dict[str, float], predicted: dict[str, int]) -> dict:
    """One line per reference video; a video without an answer gets p = 0.5 and prediction 0 (counted)."""
    from mllm.outputs import atomic_path

    missing = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for video in videos:
            if video not in predicted:
                missing += 1
            p0, p1 = _probabilities(p_present.get(video, 0.5))
            out.write(f"{video},{p0},{p1},{predicted.get(video, 0)}\n")
    return {"rows": len(videos), "videos_without_prediction": missing}


def read_bah(path) -> list[tuple[str, float, int]]:
    out = []
    for number, text in _lines(path):
        fields = text.split(",")
        try:
            if len(fields) == 4:
                p0, p1, prediction = float(fields[1]), float(fields[2]), int(fields[3])
                ok = 0 <= p0 <= 1 and 0 <= p1 <= 1 and p0 + p1 == 1.0 and prediction in (0, 1)
            elif len(fields) == 2:
                prediction = int(fields[1])
                p1, ok = float("nan"), prediction in (0, 1)
            else:
                ok = False
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{path}:{number}: expected video,prediction or video,p0,p1,prediction with p0 + p1 = 1 "
                             f"and the prediction 0 or 1, got {text!r}")  # fmt: skip
        out.append((fields[0].strip(), p1, prediction))
    return out


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
    from eval import metrics as m

    reference = reference_videos(reference_path)
    lines = read_bah(predictions_path)
    if [v for v, _, _ in lines] != [v for v, _ in reference]:
        raise ValueError(f"{predictions_path}: the videos must be those of {reference_path}, in its order "
                         f"({len(lines)} lines for {len(reference)} videos)")  # fmt: skip
    true = np.array([label for _, label in reference])
    pred = np.array([p for _, _, p in lines])
    probabilities = np.array([p for _, p, _ in lines])
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
