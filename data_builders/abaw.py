"""ABAW / Aff-Wild2: EXPR, AU and VA per-frame annotations into clip samples.

Layout (folder names of every edition accepted; the annotation tree may sit one or two folders down):

    ROOT/[...]/EXPR_Recognition_Challenge | EXPR_Classification_Challenge / Train_Set | Validation_Set / <video>.txt
    ROOT/[...]/AU_Detection_Challenge / ... ;  ROOT/[...]/VA_Estimation_Challenge / ...
    ROOT/cropped_aligned/<video>/00001.jpg ...   line i of <video>.txt is frame i
    ROOT/videos/[batch*/]<video>.mp4|avi         raw videos (audio); <name>_left / _right share <name>'s
    ROOT/[...]/{training,validation}_set_annotations.txt   multi-task list: image,valence,arousal,expression,AU1..AU26

EXPR codes 0-7 (Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other), -1 ignored; AU 12 0/1 values,
-1 ignored; VA two floats in [-1, 1], -5 ignored. Samples are windows of `clip_len` frames every `clip_stride`.

Line i of a per-video file is frame i, so a blank or undecodable line inside one is a malformed line (with
--skip-bad a masked frame) rather than skipped: skipping would shift every later label by a frame. Blank lines at
the end are no frames. Multi-task list lines name their frame; a frame beyond the video's last crop (or, without
crops, more than `MAX_FRAME_GAP` frames after the previous one) is refused as a typo. Expression clips built from
the multi-task list are explained from the same frames' AU labels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from data_builders.common import (
    MAX_FRAME_GAP,
    BuildOptions,
    BuildReport,
    Undecodable,
    complain,
    guarded,
    majority,
    not_utf8,
    prompt,
    read_lines,
    require_data,
    text_lines,
    windows,
)
from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample
from mllm.labels import ABAW_AUS, LABEL_SPACES
from mllm.media import VIDEO_EXTENSIONS

EXPR_LABELS = LABEL_SPACES["abaw_expr"]
TASK_FOLDERS = {
    "expr": ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge", "EXPR_Set"),
    "au": ("AU_Detection_Challenge", "AU_Set"),
    "va": ("VA_Estimation_Challenge", "VA_Set"),
}
SPLIT_FOLDERS = {"Train_Set": "train", "Validation_Set": "validation", "Test_Set": "test"}
MTL_FILES = {"training_set_annotations.txt": "train", "validation_set_annotations.txt": "validation"}
MTL_HEADER = ["image", "valence", "arousal", "expression"] + [a.lower() for a in ABAW_AUS]
HEADERS = {
    "expr": [n.lower() for n in EXPR_LABELS],
    "au": [a.lower() for a in ABAW_AUS],
    "va": ["valence", "arousal"],
}
_SIDE = re.compile(r"_(left|right)$")


def _find(root: Path, name: str, depth: int = 3) -> Path | None:
    """`name` at ROOT, ROOT/*, ROOT/*/*, ... without descending into the (huge) crop folders."""
    found = _find_all(root, (name,), depth)
    return found[0] if found else None


def _find_all(root: Path, names: tuple[str, ...], depth: int = 3) -> list[Path]:
    """Every one of `names` up to `depth` levels down (crop folders aside), shallowest first."""
    found = []
    for level in range(depth):
        for name in names:
            for path in sorted(root.glob("/".join(["*"] * level + [name]))):
                if not any("cropped" in part.lower() for part in path.relative_to(root).parts[:-1]):
                    found.append(path)
    return found


def _one(root: Path, names: tuple[str, ...], what: str) -> Path | None:
    """The annotation folder or file of one kind; two (two ABAW editions under one root) would be mixed silently,
    so they are refused."""
    found = _find_all(root, names)
    if len(found) > 1:
        raise ValueError(f"{root}: two {what} found ({found[0]} and {found[1]}); point --root at one edition")
    return found[0] if found else None


def _parse_value(task: str, path: Path, line_no: int, text: str):
    """One annotation line -> the frame's value, or None when the frame is marked invalid."""
    if isinstance(text, Undecodable):
        raise not_utf8(path, line_no, text)
    if not text.strip():
        raise AnnotationError(path, line_no, "", "blank line inside a per-frame annotation (line i is frame i)")
    fields = [f.strip() for f in text.split(",")]
    try:
        if task == "expr":
            if len(fields) != 1:
                raise ValueError("expected one integer")
            code = int(fields[0])
            if code == -1:
                return None
            if not 0 <= code < len(EXPR_LABELS):
                raise AnnotationError(path, line_no, text, f"expression code {code} is outside 0-7 (and -1)")
            return code
        if task == "au":
            if len(fields) != len(ABAW_AUS):
                raise ValueError(f"expected {len(ABAW_AUS)} values")
            values = [int(f) for f in fields]
            if any(v not in (-1, 0, 1) for v in values):
                raise AnnotationError(path, line_no, text, "AU values must be 0, 1 or -1")
            return None if -1 in values else values
        if len(fields) != 2:
            raise ValueError("expected valence,arousal")
        valence, arousal = float(fields[0]), float(fields[1])
        if not (math.isfinite(valence) and math.isfinite(arousal)):
            raise AnnotationError(path, line_no, text, "valence and arousal must be finite numbers")
        if valence == -5 or arousal == -5:
            return None
        if not (-1 <= valence <= 1 and -1 <= arousal <= 1):
            raise AnnotationError(path, line_no, text, "valence and arousal must lie in [-1, 1] (or -5)")
        return [valence, arousal]
    except ValueError as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(path, line_no, text, f"malformed {task.upper()} line ({exc})") from None


def _boxed_value(task: str, path: Path, line_no: int, text: str) -> tuple:
    return (_parse_value(task, path, line_no, text),)  # (None,) for an invalid frame, told apart from a bad line


def _check_header(task: str, path: Path, line_no: int, text: str) -> bool:
    """True if the line is the header (and it matches the task's columns), False if it is already data."""
    names = [f.strip().lower() for f in text.split(",")]
    if not any(c.isalpha() for c in text):
        return False
    if names != HEADERS[task]:
        raise AnnotationError(path, line_no, text, f"header does not match {task.upper()} columns {HEADERS[task]}")
    return True


def _bulk_values(task: str, lines: list[str]) -> list | None:
    """All of a file's data lines at C speed, or None if anything is off (the line-by-line parser then says what)."""
    try:
        if task == "expr":
            codes = np.array(lines, dtype=np.int64)
            if codes.size and (codes.min() < -1 or codes.max() >= len(EXPR_LABELS)):
                return None
            return [None if c == -1 else c for c in codes.tolist()]
        width = len(ABAW_AUS) if task == "au" else 2
        if any(line.count(",") != width - 1 for line in lines):
            return None
        table = np.array(",".join(lines).split(","), dtype=np.int64 if task == "au" else np.float64)
        table = table.reshape(len(lines), width)
        if task == "au":
            if not np.isin(table, (-1, 0, 1)).all():
                return None
            invalid = (table == -1).any(axis=1)
        else:
            if not np.isfinite(table).all():
                return None
            invalid = (table == -5).any(axis=1)
            if (np.abs(table[~invalid]) > 1).any():
                return None
        rows = table.tolist()
        return [None if bad else row for bad, row in zip(invalid.tolist(), rows, strict=True)]
    except ValueError:
        return None


def read_annotation(path: Path, task: str, options: BuildOptions, report: BuildReport) -> tuple[list, list[int]]:
    """Per-frame values (None for invalid frames) of one video's annotation file, and each frame's line number."""
    numbered = text_lines(path)
    while numbered and not numbered[-1][1].strip() and not isinstance(numbered[-1][1], Undecodable):
        numbered.pop()  # blank lines at the end are no frames
    # A wrong header means every column would be misread: that stops the build even with --skip-bad.
    header = bool(numbered) and not isinstance(numbered[0][1], Undecodable) and _check_header(task, path, *numbered[0])
    if header:
        numbered = numbered[1:]
    if not require_data(path, numbered, options, report, header=header):
        return [], []
    lines = [line_no for line_no, _ in numbered]
    fast = _bulk_values(task, [text for _, text in numbered])
    if fast is not None:
        return fast, lines
    values = []
    for line_no, text in numbered:
        # A skipped bad line stays a frame (marked invalid), so later lines keep their frame numbers.
        boxed = guarded(options, report, _boxed_value, task, path, line_no, text)
        values.append(None if boxed is None else boxed[0])
    return values, lines


class _Media:
    """Crop and raw-video lookup for one ABAW root, listed once."""

    def __init__(self, root: Path, report: BuildReport):
        self.root, self.report = root, report
        self.crops = _find(root, "cropped_aligned") or _find(root, "cropped-aligned")
        self._crop_sets: dict[str, list[int]] = {}
        self._reported: set[str] = set()
        self._present: dict[str, set[int]] = {}
        self.videos: dict[str, Path] = {}
        self.video_folders = [f for f in (_find(root, n) for n in ("videos", "raw_videos", "Videos")) if f is not None]
        for folder in self.video_folders:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in VIDEO_EXTENSIONS:
                    self.videos.setdefault(path.stem, path)
        self._warned = False

    def crop_indices(self, video: str, report: bool = True) -> list[int]:
        if video not in self._crop_sets:
            folder = self.crops / video if self.crops else None
            indices = (
                sorted(int(p.stem) for p in folder.glob("*.jpg") if p.stem.isdigit())
                if folder and folder.is_dir()
                else []
            )
            self._crop_sets[video] = indices
        if report and not self._crop_sets[video] and video not in self._reported:
            self._reported.add(video)
            self.report.missing(self.crops / video if self.crops else f"{self.root}/cropped_aligned/{video}")
        return self._crop_sets[video]

    def frame_paths(self, video: str, frame_indices: list[int]) -> list[str]:
        """Crop paths; a missing crop falls back to the nearest existing frame of the same video."""
        import bisect

        available = self.crop_indices(video)
        if not available:
            return []
        present = self._present.setdefault(video, set(available))
        folder = f"{self.crops}/{video}/"
        paths = []
        for index in frame_indices:
            if index in present:
                paths.append(f"{folder}{index:05d}.jpg")
                continue
            pos = bisect.bisect_left(available, index)
            if pos < len(available) and available[pos] == index:
                nearest = index
            else:
                candidates = [available[p] for p in (pos - 1, pos) if 0 <= p < len(available)]
                nearest = min(candidates, key=lambda c: (abs(c - index), c))
                self.report.fallback_frames += 1
            paths.append(f"{folder}{nearest:05d}.jpg")
        return paths

    def raw_video(self, video: str) -> str:
        """The source video; `<name>_left` and `<name>_right` are two subjects of `<name>`'s video and audio. One
        not found is missing media (its samples have crops but no video or audio)."""
        path = self.videos.get(video) or self.videos.get(_SIDE.sub("", video))
        if path is None:
            if not self.video_folders and not self._warned:
                self._warned = True
                self.report.warnings.append(
                    f"{self.root}: no raw videos folder (videos/, raw_videos/ or Videos/): samples have no audio"
                )
            self.report.missing(f"{self.root}/videos/{_SIDE.sub('', video)}.* (raw video)")
        return str(path) if path else ""

    def last_crop(self, video: str) -> int | None:
        indices = self.crop_indices(video, report=False)
        return indices[-1] if indices else None


def _clip_samples(
    video, task, split, values, lines, media: _Media, options, report, source: Path, dataset="abaw", au_values=None
):
    """`values[k]` is frame k + 1 (None when invalid); `lines[k]` its line in `source` (-1 if it has none).
    `au_values` (expression clips of the multi-task list): the same frames' AU labels, which ground the
    explanation."""
    report.total_frames += len(values)
    report.invalid_frames += sum(v is None for v in values)
    raw = None
    samples = []
    for start, end in windows(len(values), options.clip_len, options.clip_stride):
        chunk = values[start:end]
        valid = [v is not None for v in chunk]
        if not any(valid):
            report.skipped_clips += 1
            continue
        indices = list(range(start + 1, end + 1))  # line i (after the header) is frame i
        raw = media.raw_video(video) if raw is None else raw
        sample = Sample(
            id=f"{dataset}/{task}/{split}/{video}/{start + 1:05d}-{end:05d}",
            dataset=dataset,
            split=split,
            task=task,
            subject=video,
            video=raw,
            audio=raw,
            frames=media.frame_paths(video, indices),
            frame_indices=indices,
            source_file=str(source),
            source_line=lines[start],
        )
        good = [v for v in chunk if v is not None]
        if task == "expr":
            sample.expression_frames = [-1 if v is None else v for v in chunk]
            sample.expression_valid = valid
            sample.expression = EXPR_LABELS[majority(good)]
            answer, aus = sample.expression, None
            if au_values is not None:
                au_chunk = au_values[start:end]
                sample.au_frames = [[-1] * len(ABAW_AUS) if v is None else v for v in au_chunk]
                sample.au_valid = [v is not None for v in au_chunk]
                aus = _active(au_chunk)
                sample.aus = aus or []
        elif task == "au":
            sample.au_frames = [[-1] * len(ABAW_AUS) if v is None else v for v in chunk]
            sample.au_valid = valid
            sample.aus = _active(chunk)
            answer, aus = tuple(sample.aus), sample.aus
        else:
            sample.va_frames = [[-5.0, -5.0] if v is None else v for v in chunk]
            sample.va_valid = valid
            sample.valence = round(sum(v[0] for v in good) / len(good), 4)
            sample.arousal = round(sum(v[1] for v in good) / len(good), 4)
            answer, aus = (sample.valence, sample.arousal), None
        part = {"type": "video", "video": raw, "frames": sample.frames, "frame_indices": indices}
        sample.prompt = prompt(task, part, EXPR_LABELS if task == "expr" else ABAW_AUS)
        sample.target, sample.target_grounding = build_target(sample.id, task, answer, aus, seed=options.seed)
        samples.append(sample)
    return samples


def _active(au_rows: list) -> list[str] | None:
    """AUs active in at least half the valid frames (None for AU rows); None when no frame is valid."""
    good = [v for v in au_rows if v is not None]
    if not good:
        return None
    columns = zip(*good, strict=True)  # per AU, its values over the valid frames
    return [au for au, col in zip(ABAW_AUS, columns, strict=True) if 2 * sum(col) >= len(good)]


def _parse_mtl_line(path: Path, line_no: int, text: str):
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 4 + len(ABAW_AUS):
        raise AnnotationError(path, line_no, text, f"expected {4 + len(ABAW_AUS)} comma-separated fields")
    video, _, frame = fields[0].rpartition("/")
    stem = Path(frame).stem
    if not video or not stem.isascii() or not stem.isdigit():
        raise AnnotationError(path, line_no, text, "image must look like <video>/<frame>.jpg")
    if int(stem) < 1:
        raise AnnotationError(path, line_no, text, "frame numbers start at 1")
    return (
        video,
        int(stem),
        _parse_value("va", path, line_no, ",".join(fields[1:3])),
        _parse_value("expr", path, line_no, fields[3]),
        _parse_value("au", path, line_no, ",".join(fields[4:])),
    )


def _read_mtl(
    path: Path, media: _Media, options: BuildOptions, report: BuildReport
) -> dict[str, dict[str, dict[int, object]]]:
    """Multi-task list -> {video: {task: {frame index: value or None}, "lines": {frame index: line number}}}."""
    per_video: dict[str, dict[str, dict[int, object]]] = {}
    texts: dict[int, str] = {}
    numbered = read_lines(path, options, report)
    header = bool(numbered) and numbered[0][1].split(",")[0].strip().lower() == "image"
    if header:
        line_no, text = numbered[0]
        # Every column is checked: a swapped pair of AU columns would silently swap their labels.
        if [f.strip().lower() for f in text.split(",")] != MTL_HEADER:
            raise AnnotationError(path, line_no, text, f"header does not match the multi-task columns {MTL_HEADER}")
        numbered = numbered[1:]
    if not require_data(path, numbered, options, report, header=header):
        return {}
    for line_no, text in numbered:
        row = guarded(options, report, _parse_mtl_line, path, line_no, text)
        if row is None:
            continue
        video, index, va, expr, au = row
        tasks = per_video.setdefault(video, {"expr": {}, "au": {}, "va": {}, "lines": {}})
        if index in tasks["lines"]:
            first = tasks["lines"][index]
            if (tasks["va"][index], tasks["expr"][index], tasks["au"][index]) == (va, expr, au):
                report.duplicates.append(f"{path}:{line_no}: repeats {path}:{first}")
            else:
                error = AnnotationError(path, line_no, text, f"conflicting labels for the frame on line {first}")
                complain(options, report, error)
                tasks["va"][index] = tasks["expr"][index] = tasks["au"][index] = None  # neither line is kept
            continue
        tasks["va"][index], tasks["expr"][index], tasks["au"][index] = va, expr, au
        tasks["lines"][index] = line_no
        texts[line_no] = text
    for video, tasks in per_video.items():
        _bound_frames(video, tasks, texts, path, media, options, report)
    return {video: tasks for video, tasks in per_video.items() if tasks["lines"]}


def _bound_frames(video, tasks, texts, path, media: _Media, options, report) -> None:
    """A frame number past the video's last crop (or, with no crops, far past the previous frame) is a typo that
    would build clips of millions of empty frames: a malformed line, left out with --skip-bad."""
    last = media.last_crop(video)
    previous = 0
    for index in sorted(tasks["lines"]):
        line_no = tasks["lines"][index]
        if last is not None and index > last:
            reason = f"frame {index} is past the last crop of {video} ({last:05d}.jpg)"
        elif last is None and index - previous > MAX_FRAME_GAP:
            reason = f"frame {index} is {index - previous} frames after the previous one (more than {MAX_FRAME_GAP})"
        else:
            previous = index
            continue
        complain(options, report, AnnotationError(path, line_no, texts[line_no], reason))
        for values in tasks.values():
            values.pop(index, None)


def _stray(folder: Path, expected: set[str], report: BuildReport, what: str) -> None:
    """List what a layout folder holds besides `expected` (hidden files aside): ignored, and said so."""
    for entry in sorted(folder.iterdir()):
        if entry.name not in expected and not entry.name.startswith("."):
            report.ignored.append(f"{entry} (not {what})")


def build(options: BuildOptions, report: BuildReport, progress=None) -> list[Sample]:
    media = _Media(options.root, report)
    samples: list[Sample] = []
    jobs = []
    for task, names in TASK_FOLDERS.items():
        if not options.wants(task):
            continue
        folder = _one(options.root, names, f"{task.upper()} annotation folders")
        if folder is None:
            continue
        _stray(folder, set(SPLIT_FOLDERS), report, f"a split folder: {sorted(SPLIT_FOLDERS)}")
        for split_folder, split in SPLIT_FOLDERS.items():
            if (folder / split_folder).is_dir() and options.wants(split=split):
                files = sorted((folder / split_folder).glob("*.txt"))
                _stray(folder / split_folder, {f.name for f in files}, report, "a <video>.txt annotation")
                jobs += [(task, split, path) for path in files if path.is_file()]
    for name, split in MTL_FILES.items():
        path = _one(options.root, (name,), "multi-task lists")
        if path is not None and options.wants(split=split):
            jobs.append(("mtl", split, path))
    if not jobs:
        looked_for = sorted(n for names in TASK_FOLDERS.values() for n in names) + sorted(MTL_FILES)
        raise FileNotFoundError(f"{options.root}: no ABAW annotations found (looked for {looked_for})")
    for task, split, path in jobs:
        if task == "mtl":
            for video, tasks in sorted(_read_mtl(path, media, options, report).items()):
                by_line = tasks.pop("lines")
                frames = range(1, max(by_line) + 1)
                lines = [by_line.get(i, -1) for i in frames]
                au_values = [tasks["au"].get(i) for i in frames]
                for sub_task, by_index in tasks.items():
                    if options.wants(sub_task):
                        values = [by_index.get(i) for i in frames]
                        extra = {"au_values": au_values} if sub_task == "expr" else {}
                        samples += _clip_samples(
                            video, sub_task, split, values, lines, media, options, report, path, **extra
                        )
        else:
            values, lines = read_annotation(path, task, options, report)
            samples += _clip_samples(path.stem, task, split, values, lines, media, options, report, path)
        if progress is not None:
            progress(1, len(jobs))
    return samples
