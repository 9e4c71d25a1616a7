"""BAH (ambivalence/hesitancy): video-level and segment-level samples, transcripts and cues from the annotations.

ROOT/split/{train,val,test}.txt          video_path,label,transcript   (the transcript itself may hold commas)
ROOT/split-frames/{train,val,test}.txt   <video>.mp4/frame-<N>.jpg,<0|1>   (optional, frame-level labels)
ROOT/annotations/<video stem>.yaml       global label, time segments and frame segments (written as python
                                         tuples), cues per modality, transcript
ROOT/videos/<video_path>
ROOT/participants.csv                    participant metadata; the participant id is <video_path>'s first folder
"""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

from data_builders.common import BuildOptions, BuildReport, complain, guarded, prompt, read_lines
from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample

SPLITS = {"train": "train", "val": "validation", "test": "test"}
_TUPLE_VALUE = re.compile(r"^(\s*\w+):\s*(\[?\s*\(.*)$", re.MULTILINE)


def _quote(value: str) -> str:
    return "'" + value.strip().replace("'", "''") + "'"


def _tuples(value, path: Path, key: str) -> list[tuple[float, float]]:
    """YAML holds `(a, b)` python tuples as strings (or lists of them): evaluate them as literals, safely."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise AnnotationError(path, None, str(value), f"'{key}' is not a list of (start, end) tuples") from None
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, str):
            item = ast.literal_eval(item)
        if not (isinstance(item, list | tuple) and len(item) == 2 and item[0] <= item[1]):
            raise AnnotationError(path, None, str(item), f"'{key}' entries must be (start, end) with start <= end")
        out.append((float(item[0]), float(item[1])))
    return out


def read_annotation(path: Path) -> dict:
    import yaml

    # Values written as python tuples, `[(0.5, 2.3), ...]`, are not YAML: YAML would split them at every comma.
    # Quote such values so they arrive whole, then evaluate them as python literals.
    text = _TUPLE_VALUE.sub(lambda m: f"{m.group(1)}: {_quote(m.group(2))}", path.read_text(encoding="utf-8"))
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise AnnotationError(
            path, None if line is None else line + 1, str(exc).splitlines()[0], "invalid YAML"
        ) from None
    label = data.get("global_label", data.get("label"))
    if label not in (0, 1):
        raise AnnotationError(path, None, str(label), "global label must be 0 or 1")
    cues = data.get("cues") or {}
    if not isinstance(cues, dict):
        raise AnnotationError(path, None, str(cues), "'cues' must map modality -> text")
    return {
        "label": int(label),
        "segments": _tuples(data.get("segments", data.get("time_segments")), path, "segments"),
        "frame_segments": _tuples(data.get("frame_segments"), path, "frame_segments"),
        "cues": {str(k): ("; ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in cues.items() if v},
        "transcript": str(data.get("transcript") or ""),
    }


def _participants(root: Path) -> dict[str, dict]:
    path = root / "participants.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    key = next((k for k in (rows[0].keys() if rows else []) if "id" in k.lower()), None)
    return {row[key]: row for row in rows} if key else {}


def build(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    split_dir = options.root / "split"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: BAH split folder not found")
    participants = _participants(options.root)
    samples = []
    for name, split in SPLITS.items():
        path = split_dir / f"{name}.txt"
        if not path.exists() or not options.wants(split=split):
            continue
        for line_no, text in read_lines(path):

            def parse(line_no=line_no, text=text, path=path):
                parts = text.split(",", 2)  # the transcript (third field) keeps its own commas
                if len(parts) < 2 or parts[1].strip() not in ("0", "1"):
                    raise AnnotationError(path, line_no, text, "expected 'video_path,label(0|1),transcript'")
                return parts[0].strip(), int(parts[1]), (parts[2].strip() if len(parts) == 3 else "")

            row = guarded(options, report, parse)
            if row is None:
                continue
            video_path, label, transcript = row
            video = options.root / "videos" / video_path
            if not video.exists():
                report.missing(video)
            stem = Path(video_path).stem
            annotation_path = options.root / "annotations" / f"{stem}.yaml"
            annotation = {"label": label, "segments": [], "frame_segments": [], "cues": {}, "transcript": ""}
            if annotation_path.exists():
                loaded = guarded(options, report, read_annotation, annotation_path)
                if loaded is not None:
                    if loaded["label"] != label:
                        complain(
                            options,
                            report,
                            AnnotationError(
                                annotation_path,
                                None,
                                str(loaded["label"]),
                                f"global label disagrees with {path.name}:{line_no} ({label})",
                            ),
                        )
                    annotation = loaded
            transcript = transcript or annotation["transcript"]
            participant = Path(video_path).parts[0] if len(Path(video_path).parts) > 1 else ""
            if participants and participant and participant not in participants:
                report.bad_lines.append(f"{video_path}: participant {participant!r} not in participants.csv")
            windows = [(-1.0, -1.0, label, "video")] + [(s, e, 1, "segment") for s, e in annotation["segments"]]
            for start, end, value, level in windows:
                suffix = "" if level == "video" else f"/{start:.2f}-{end:.2f}"
                sample = Sample(
                    id=f"bah/{split}/{stem}{suffix}",
                    dataset="bah",
                    split=split,
                    task="ah",
                    subject=participant,
                    video=str(video),
                    audio=str(video),
                    start_s=start,
                    end_s=end,
                    ah=value,
                    transcript=transcript,
                    cues=annotation["cues"] if value else {},
                    source_file=str(path),
                    source_line=line_no,
                )
                part = {"type": "video", "video": str(video)}
                if level == "segment":
                    part.update(start_s=start, end_s=end)
                shown = transcript if options.transcript_in_prompt else ""
                sample.prompt = prompt("ah", part, transcript=shown)
                sample.target, sample.target_grounding = build_target(
                    sample.id, "ah", bool(value), None, cues=sample.cues, transcript=shown, seed=options.seed
                )
                samples.append(sample)
    samples += _frame_labels(options, report)
    return samples


def _frame_labels(options: BuildOptions, report: BuildReport) -> list[Sample]:
    """Frame-level split lines, grouped per video into one sample holding every labelled frame."""
    folder = options.root / "split-frames"
    samples = []
    for name, split in SPLITS.items():
        path = folder / f"{name}.txt"
        if not path.exists() or not options.wants(split=split):
            continue
        per_video: dict[str, dict[int, int]] = {}
        for line_no, text in read_lines(path):

            def parse(line_no=line_no, text=text, path=path):
                image, _, value = text.rpartition(",")
                video, _, frame = image.rpartition("/")
                if value.strip() not in ("0", "1") or not frame.startswith("frame-") or not video:
                    raise AnnotationError(path, line_no, text, "expected '<video>.mp4/frame-<N>.jpg,<0|1>'")
                return video, int(Path(frame).stem.split("-", 1)[1]), int(value)

            row = guarded(options, report, parse)
            if row is not None:
                per_video.setdefault(row[0], {})[row[1]] = row[2]
        for video, frames in sorted(per_video.items()):
            indices = sorted(frames)
            value = int(any(frames[i] for i in indices))
            sample = Sample(
                id=f"bah/{split}/{Path(video).stem}/frames",
                dataset="bah",
                split=split,
                task="ah",
                video=str(options.root / "videos" / video),
                audio=str(options.root / "videos" / video),
                frame_indices=indices,
                ah=value,
                ah_frames=[frames[i] for i in indices],
                source_file=str(path),
            )
            sample.prompt = prompt("ah", {"type": "video", "video": sample.video, "frame_indices": indices})
            sample.target, sample.target_grounding = build_target(
                sample.id, "ah", bool(value), None, seed=options.seed
            )
            samples.append(sample)
    return samples
