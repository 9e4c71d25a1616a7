"""BAH (ambivalence/hesitancy): video-level, segment-level and frame-level samples, transcripts and cues from the
annotations, participant metadata.

ROOT/split/{train,val,test}.txt          video_path,label,transcript   (the transcript itself may hold commas)
ROOT/split-frames/{train,val,test}.txt   <video>.mp4/frame-<N>.jpg,<0|1>   (optional, frame-level labels)
ROOT/annotations/<video stem>.yaml       global label, time segments and frame segments (written as python
                                         tuples), cues per modality, transcript
ROOT/videos/<video_path>
ROOT/participants.csv                    participant metadata; the participant id is <video_path>'s first folder

Samples: one per video, one per time segment (`start_s`/`end_s`), one per frame segment (its frames, all
labelled present), and one per video of `split-frames` (its labelled frames). Every sample of a participant
carries the other columns of its `participants.csv` row in `meta`, so evaluation can break metrics down by group.
Segments are where A/H is present, so a video labelled absent with segments, or a frame line that disagrees with
the frame segments, is a disagreement (a malformed line, left out with --skip-bad, which keeps the split file's
label).
"""

from __future__ import annotations

import ast
import csv
import math
import re
from pathlib import Path

from data_builders.common import (
    MAX_FRAME_GAP,
    BuildOptions,
    BuildReport,
    complain,
    guarded,
    prompt,
    read_lines,
    relative_media,
    require_data,
)
from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample

SPLITS = {"train": "train", "val": "validation", "test": "test"}
PARTICIPANT_ID_COLUMNS = ("participant_id", "participant", "subject_id", "subject", "id")
_TUPLE_VALUE = re.compile(r"^(\s*\w+):\s*(\[?\s*\(.*)$", re.MULTILINE)
_FRAME = re.compile(r"^frame-([0-9]+)\.[A-Za-z]+$")
YAML_KEYS = ("global_label", "label", "segments", "time_segments", "frame_segments", "cues", "transcript")


def _quote(value: str) -> str:
    return "'" + value.strip().replace("'", "''") + "'"


def _key_line(text: str, key: str) -> int | None:
    """The 1-based line of `key:` in a YAML text, to name it in errors."""
    match = re.search(rf"^\s*{re.escape(key)}\s*:", text, re.MULTILINE)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tuples(value, path: Path, key: str, line: int | None, frames: bool = False) -> list[tuple[float, float]]:
    """YAML holds `(a, b)` python tuples as strings (or lists of them): evaluate them as literals, safely.
    Times are finite seconds >= 0; frames are whole numbers >= 0 at most `MAX_FRAME_GAP` apart."""

    def bad(item, reason="entries must be (start, end) with 0 <= start <= end"):
        return AnnotationError(path, line, str(item), f"'{key}' {reason}")

    def literal(text):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise AnnotationError(path, line, str(text), f"'{key}' is not a list of (start, end) tuples") from None

    if value in (None, "", []):
        return []
    if isinstance(value, str):
        value = literal(value)
    if isinstance(value, tuple) and len(value) == 2 and all(_number(v) for v in value):
        value = [value]
    if not isinstance(value, list | tuple):
        raise AnnotationError(path, line, str(value), f"'{key}' is not a list of (start, end) tuples")
    out = []
    for item in value:
        if isinstance(item, str):
            item = literal(item)
        if not (isinstance(item, list | tuple) and len(item) == 2 and all(_number(v) for v in item)):
            raise bad(item)
        start, end = item
        if not 0 <= start <= end:
            raise bad(item)
        if frames:
            if not (float(start).is_integer() and float(end).is_integer()):
                raise bad(item, "entries must be whole frame numbers")
            if end - start > MAX_FRAME_GAP:
                raise bad(item, f"entry spans more than {MAX_FRAME_GAP} frames (a typo?)")
        out.append((float(start), float(end)) if not frames else (int(start), int(end)))
    return out


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice (the last would silently win)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def read_annotation(path: Path) -> dict:
    import yaml

    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(path, line, "", f"not UTF-8 text (byte {exc.start})") from None
    # Values written as python tuples, `[(0.5, 2.3), ...]`, are not YAML: YAML would split them at every comma.
    # Quote such values so they arrive whole, then evaluate them as python literals.
    text = _TUPLE_VALUE.sub(lambda m: f"{m.group(1)}: {_quote(m.group(2))}", raw)
    try:
        data = yaml.load(text, Loader=_strict_loader()) or {}  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise AnnotationError(
            path, None if mark is None else mark.line + 1, str(exc).splitlines()[0], "invalid YAML"
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:  # an unhashable key, say
        raise AnnotationError(path, None, str(exc), "invalid YAML") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise AnnotationError(path, 1, "", f"expected a mapping (global_label, segments, cues, ...), got a {kind}")
    key = "global_label" if "global_label" in data else "label"
    label = data.get(key)
    if isinstance(label, bool) or label not in (0, 1):
        raise AnnotationError(path, _key_line(raw, key), str(label), "global label must be 0 or 1")
    cues = data.get("cues") or {}
    if not isinstance(cues, dict) or not all(
        isinstance(v, str | int | float | type(None)) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        for v in cues.values()
    ):
        raise AnnotationError(path, _key_line(raw, "cues"), str(cues), "'cues' must map modality -> text")
    transcript = data.get("transcript")
    if transcript is not None and not isinstance(transcript, str | int | float):
        raise AnnotationError(path, _key_line(raw, "transcript"), str(transcript), "'transcript' must be text")
    segments_key = "segments" if "segments" in data else "time_segments"
    return {
        "label": int(label),
        "segments": _tuples(data.get(segments_key), path, segments_key, _key_line(raw, segments_key)),
        "frame_segments": _tuples(
            data.get("frame_segments"), path, "frame_segments", _key_line(raw, "frame_segments"), frames=True
        ),
        "cues": {str(k): ("; ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in cues.items() if v},
        "transcript": "" if transcript is None else str(transcript),
        "lines": {k: _key_line(raw, k) for k in ("segments", "time_segments", "frame_segments")},
        "unknown": sorted(str(k) for k in data if k not in YAML_KEYS),  # a misspelt key would drop its labels
    }


def _participants(root: Path, options: BuildOptions, report: BuildReport) -> dict[str, dict]:
    """participant id -> {column: value} of its other columns; a row is a line (ids given twice must agree)."""
    path = root / "participants.csv"
    if not path.exists():
        return {}
    numbered = read_lines(path, options, report)
    if not numbered:
        complain(options, report, AnnotationError(path, None, "", "no data lines (empty file)"))
        return {}
    header_line, header_text = numbered[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    lowered = [h.lower() for h in header]
    id_column = next((lowered.index(c) for c in PARTICIPANT_ID_COLUMNS if c in lowered), None)
    if id_column is None or len(set(lowered)) != len(lowered):
        reason = "columns must be unique" if id_column is not None else f"no id column {PARTICIPANT_ID_COLUMNS}"
        raise AnnotationError(path, header_line, header_text, f"header: {reason}")
    require_data(path, numbered[1:], options, report, header=True)
    rows: dict[str, dict] = {}
    lines: dict[str, int] = {}
    for line_no, text in numbered[1:]:
        fields = [f.strip() for f in next(csv.reader([text]))]
        if len(fields) != len(header) or not fields[id_column]:
            complain(options, report, AnnotationError(path, line_no, text, f"expected {len(header)} fields"))
            continue
        participant = fields[id_column]
        meta = {h: v for i, (h, v) in enumerate(zip(header, fields, strict=True)) if i != id_column}
        if participant in rows:
            if rows[participant] != meta:
                reason = f"participant {participant!r} given again, differently from line {lines[participant]}"
                complain(options, report, AnnotationError(path, line_no, text, reason))
            else:
                report.duplicates.append(f"{path}:{line_no}: repeats {path}:{lines[participant]}")
            continue
        rows[participant], lines[participant] = meta, line_no
    return rows


def _parse_video_line(path: Path, line_no: int, text: str):
    parts = text.split(",", 2)  # the transcript (third field) keeps its own commas
    if len(parts) < 2 or parts[1].strip() not in ("0", "1"):
        raise AnnotationError(path, line_no, text, "expected 'video_path,label(0|1),transcript'")
    video_path = relative_media(path, line_no, text, parts[0])
    return video_path, int(parts[1]), (parts[2].strip() if len(parts) == 3 else "")


def _participant_of(video_path: str) -> str:
    parts = Path(video_path).parts
    return parts[0] if len(parts) > 1 else ""


class _Meta:
    """Participants' metadata by video path, warning once per participant missing from participants.csv."""

    def __init__(self, root: Path, options: BuildOptions, report: BuildReport):
        self.rows, self.report, self.warned = _participants(root, options, report), report, set()

    def __call__(self, video_path: str, where: str) -> tuple[str, dict]:
        participant = _participant_of(video_path)
        if self.rows and participant and participant not in self.rows and participant not in self.warned:
            self.warned.add(participant)
            self.report.warnings.append(f"{where}: participant {participant!r} is not in participants.csv")
        return participant, dict(self.rows.get(participant, {}))


def _split_files(folder: Path, options: BuildOptions, report: BuildReport):
    """(split, path, numbered lines) of each wanted split file in `folder` (`train.txt`, `val.txt`, `test.txt`),
    each checked to hold data."""
    for name, split in SPLITS.items():
        path = folder / f"{name}.txt"
        if not path.exists() or not options.wants(split=split):
            continue
        numbered = read_lines(path, options, report)
        require_data(path, numbered, options, report)
        yield split, path, numbered


def build(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    split_dir = options.root / "split"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: BAH split folder not found")
    _stray(split_dir, report)
    meta_of = _Meta(options.root, options, report)
    annotations: dict[str, dict] = {}  # video stem -> its annotation, for the frame lines' cross-check
    samples = []
    for split, path, numbered in _split_files(split_dir, options, report):
        for line_no, text in numbered:
            row = guarded(options, report, _parse_video_line, path, line_no, text)
            if row is None:
                continue
            video_path, label, transcript = row
            video = options.root / "videos" / video_path
            if not video.exists():
                report.missing(video)
            stem = Path(video_path).stem
            annotation = _annotation(options, report, stem, label, path, line_no)
            annotations.setdefault(stem, annotation)
            transcript = transcript or annotation["transcript"]
            participant, meta = meta_of(video_path, f"{path}:{line_no}")
            windows = [(-1.0, -1.0, "video")] + [(s, e, "segment") for s, e in annotation["segments"]]
            windows += [(s, e, "frames") for s, e in annotation["frame_segments"]]
            for start, end, level in windows:
                value = label if level == "video" else 1
                suffix = {"video": "", "segment": f"/{start:.2f}-{end:.2f}", "frames": f"/frames/{start}-{end}"}
                sample = Sample(
                    id=f"bah/{split}/{stem}{suffix[level]}",
                    dataset="bah",
                    split=split,
                    task="ah",
                    subject=participant,
                    video=str(video),
                    audio=str(video),
                    ah=value,
                    transcript=transcript,
                    cues=annotation["cues"] if value else {},
                    source_file=str(path),
                    source_line=line_no,
                    meta=meta,
                )
                part = {"type": "video", "video": str(video)}
                if level == "segment":
                    sample.start_s, sample.end_s = start, end
                    part.update(start_s=start, end_s=end)
                elif level == "frames":
                    sample.frame_indices = list(range(start, end + 1))
                    sample.ah_frames = [1] * len(sample.frame_indices)
                    part["frame_indices"] = sample.frame_indices
                shown = transcript if options.transcript_in_prompt else ""
                sample.prompt = prompt("ah", part, transcript=shown)
                sample.target, sample.target_grounding = build_target(
                    sample.id, "ah", bool(value), None, cues=sample.cues, transcript=shown, seed=options.seed
                )
                samples.append(sample)
        if progress is not None:
            progress(1, len(SPLITS))
    samples += _frame_labels(options, report, meta_of, annotations)
    return samples


def _stray(folder: Path, report: BuildReport) -> None:
    expected = {f"{name}.txt" for name in SPLITS}
    for entry in sorted(folder.iterdir()):
        if entry.name not in expected and not entry.name.startswith("."):
            report.ignored.append(f"{entry} (not a split file: {sorted(expected)})")


def _annotation(options, report, stem: str, label: int, path: Path, line_no: int) -> dict:
    """The video's YAML annotation, checked against its split line's label (the split file's label is kept)."""
    annotation_path = options.root / "annotations" / f"{stem}.yaml"
    empty = {"label": label, "segments": [], "frame_segments": [], "cues": {}, "transcript": "", "lines": {}}
    if not annotation_path.exists():
        return empty
    loaded = guarded(options, report, read_annotation, annotation_path)
    if loaded is None:
        return empty
    if loaded["label"] != label:
        reason = f"global label disagrees with {path.name}:{line_no} ({label})"
        complain(options, report, AnnotationError(annotation_path, None, str(loaded["label"]), reason))
        loaded = {**loaded, "segments": [], "frame_segments": []} if label == 0 else loaded
    elif label == 0 and (loaded["segments"] or loaded["frame_segments"]):
        key = "segments" if loaded["segments"] else "frame_segments"
        line = loaded["lines"].get(key) or loaded["lines"].get("time_segments")
        reason = f"A/H segments in a video labelled absent ({path.name}:{line_no})"
        complain(options, report, AnnotationError(annotation_path, line, "", reason))
        loaded = {**loaded, "segments": [], "frame_segments": []}
    if loaded["unknown"]:
        report.warnings.append(f"{annotation_path}: keys ignored (not {', '.join(YAML_KEYS)}): {loaded['unknown']}")
    loaded["path"] = annotation_path
    return loaded


def _parse_frame_line(path: Path, line_no: int, text: str):
    image, _, value = text.rpartition(",")
    video, _, frame = image.strip().rpartition("/")
    match = _FRAME.match(frame)
    if value.strip() not in ("0", "1") or match is None or not video:
        raise AnnotationError(path, line_no, text, "expected '<video>.mp4/frame-<N>.jpg,<0|1>'")
    return relative_media(path, line_no, text, video), int(match.group(1)), int(value)


def _frame_labels(options: BuildOptions, report: BuildReport, meta_of, annotations: dict) -> list[Sample]:
    """Frame-level split lines, grouped per video into one sample holding every labelled frame."""
    folder = options.root / "split-frames"
    samples = []
    if folder.is_dir():
        _stray(folder, report)
    for split, path, numbered in _split_files(folder, options, report):
        per_video: dict[str, dict[int, tuple[int, int, str]]] = {}  # video -> frame -> (label, line, text)
        for line_no, text in numbered:
            row = guarded(options, report, _parse_frame_line, path, line_no, text)
            if row is None:
                continue
            video, frame, value = row
            frames = per_video.setdefault(video, {})
            if frame in frames:
                first_value, first_line, _ = frames[frame]
                if first_value == value:
                    report.duplicates.append(f"{path}:{line_no}: repeats {path}:{first_line}")
                else:
                    reason = f"conflicting label for the frame on line {first_line}"
                    complain(options, report, AnnotationError(path, line_no, text, reason))
                    frames[frame] = (-1, first_line, text)  # neither line is kept
                continue
            frames[frame] = (value, line_no, text)
        for video, frames in sorted(per_video.items()):
            _check_frames(path, video, frames, annotations.get(Path(video).stem), options, report)
            indices = sorted(i for i in frames if frames[i][0] >= 0)
            if not indices:
                continue
            participant, meta = meta_of(video, f"{path}:{frames[indices[0]][1]}")
            if not (options.root / "videos" / video).exists():
                report.missing(options.root / "videos" / video)
            value = int(any(frames[i][0] for i in indices))
            sample = Sample(
                id=f"bah/{split}/{Path(video).stem}/frames",
                dataset="bah",
                split=split,
                task="ah",
                subject=participant,
                video=str(options.root / "videos" / video),
                audio=str(options.root / "videos" / video),
                frame_indices=indices,
                ah=value,
                ah_frames=[frames[i][0] for i in indices],
                source_file=str(path),
                source_line=frames[indices[0]][1],
                meta=meta,
            )
            sample.prompt = prompt("ah", {"type": "video", "video": sample.video, "frame_indices": indices})
            sample.target, sample.target_grounding = build_target(
                sample.id, "ah", bool(value), None, seed=options.seed
            )
            samples.append(sample)
    return samples


def _check_frames(path: Path, video: str, frames: dict, annotation: dict | None, options, report) -> None:
    """Frame numbers far past the previous one are typos; labels must agree with the video's frame segments.
    A frame that fails is a malformed line (left out with --skip-bad)."""
    segments = annotation["frame_segments"] if annotation else []
    previous = 0
    for index in sorted(frames):
        value, line_no, text = frames[index]
        reason = None
        if index - previous > MAX_FRAME_GAP:
            reason = f"frame {index} is {index - previous} frames after the previous one (more than {MAX_FRAME_GAP})"
        elif value >= 0 and segments:
            inside = any(s <= index <= e for s, e in segments)
            if inside != bool(value):
                side = "inside" if inside else "outside"
                reason = f"label {value} disagrees with {annotation['path']}: frame {index} is {side} frame_segments"
        if reason is None:
            previous = index
            continue
        complain(options, report, AnnotationError(path, line_no, text, reason))
        frames[index] = (-1, line_no, text)
