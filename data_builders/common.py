"""What the builders share: options, the build report, line reading with `--skip-bad`, prompts, clip windows."""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath

from data_builders.cot import build_target
from data_builders.schema import AnnotationError, Sample
from mllm.output import question


@dataclass
class BuildOptions:
    root: Path
    tasks: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    skip_bad: bool = False
    seed: int = 0
    clip_len: int = 16
    clip_stride: int = 16
    transcript_in_prompt: bool = True
    classes: int = 7  # AffectNet: 7 or 8
    allow_split_overlap: bool = False  # build even when one video/image is in two splits of a protocol (leakage)

    def __post_init__(self):
        self.root = Path(self.root)
        if self.clip_len < 1 or self.clip_stride < 1:
            raise ValueError("clip_len and clip_stride must be >= 1")

    def wants(self, task: str | None = None, split: str | None = None) -> bool:
        return (task is None or not self.tasks or task in self.tasks) and (
            split is None or not self.splits or split in self.splits
        )


@dataclass
class BuildReport:
    bad_lines: list[str] = field(default_factory=list)  # per-line problems skipped with --skip-bad
    missing_media: list[str] = field(default_factory=list)
    invalid_frames: int = 0
    total_frames: int = 0
    fallback_frames: int = 0
    skipped_clips: int = 0
    duplicates: list[str] = field(default_factory=list)  # exact repeats of a sample, dropped
    overlaps: list[str] = field(default_factory=list)  # samples in two splits, kept with --allow-split-overlap
    ignored: list[str] = field(default_factory=list)  # files in the layout's folders that are not part of it
    warnings: list[str] = field(default_factory=list)

    def missing(self, path) -> None:
        if str(path) not in self.missing_media:
            self.missing_media.append(str(path))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# No video has a gap this long between annotated frames (about an hour at 30 fps): a frame number beyond it is a
# typo that would build a clip of millions of empty frames.
MAX_FRAME_GAP = 100_000


class Undecodable(str):
    """A line that is not UTF-8 (its bytes shown with backslash escapes)."""


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every line of a file, split at "\\n" only (as editors number them: a form
    feed or U+2028 inside a line does not start a new one), "\\r" and a UTF-8 byte-order mark removed. A line that
    is not UTF-8 comes as `Undecodable`."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        lines: list[str] = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(Undecodable(raw.decode("utf-8", "backslashreplace")))
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    if b"\r" in data:
        lines = [type(line)(line[:-1]) if line.endswith("\r") else line for line in lines]
    return list(enumerate(lines, 1))


def not_utf8(path: Path, line_no: int, text: str) -> AnnotationError:
    return AnnotationError(path, line_no, text, "not UTF-8 text")


def read_lines(path: Path, options: BuildOptions, report: BuildReport) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of a text file; a line that is not UTF-8 is a malformed
    line (`complain`: it stops the build, or with --skip-bad is counted and left out)."""
    out = []
    for line_no, text in text_lines(path):
        if isinstance(text, Undecodable):
            complain(options, report, not_utf8(path, line_no, text))
        elif text.strip():
            out.append((line_no, text))
    return out


def require_data(path: Path, rows: list, options: BuildOptions, report: BuildReport, header: bool = False) -> bool:
    """An annotation file without data lines would vanish from the build: it is a problem, reported like a bad
    line. Returns whether there are rows."""
    if not rows:
        reason = "only a header, no data lines" if header else "no data lines (empty file)"
        complain(options, report, AnnotationError(path, None, "", reason))
    return bool(rows)


def complain(options: BuildOptions, report: BuildReport, error: AnnotationError) -> None:
    """A malformed annotation stops the build, or with --skip-bad is counted and reported."""
    if not options.skip_bad:
        raise error
    report.bad_lines.append(str(error))


def guarded(options: BuildOptions, report: BuildReport, fn, *args):
    """Call a line parser; on a malformed line, `complain` and return None."""
    try:
        return fn(*args)
    except AnnotationError as exc:
        complain(options, report, exc)
        return None


def relative_media(path: Path, line_no: int, text: str, value: str) -> str:
    """A media path from an annotation line: relative to the dataset root and staying inside it."""
    value = value.strip()
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if not value or value.startswith(("/", "\\")) or ".." in parts or ":" in value.split("/")[0]:
        raise AnnotationError(path, line_no, text, "media path must be relative to the dataset root, without '..'")
    return value


def where(sample: Sample, seen_from: Sample | None = None, root: Path | None = None) -> str:
    """`file:line` of a sample; "line N" when `seen_from` is in the same file, the file relative to `root` when
    under it (error lines stay short enough to show whole)."""
    if seen_from is not None and seen_from.source_file == sample.source_file and sample.source_line > 0:
        return f"line {sample.source_line}"
    path = sample.source_file
    if root is not None and path.startswith(f"{root}/"):
        path = path[len(str(root)) + 1 :]
    return f"{path}:{sample.source_line}" if sample.source_line > 0 else path


_LABEL_FIELDS = ("expression", "expression_frames", "aus", "au_frames", "valence", "arousal", "va_frames", "ah")
_MEDIA_FIELDS = ("image", "video", "frames", "frame_indices", "start_s", "end_s")


def _labels_of(sample: Sample) -> str:
    if sample.task == "expr":
        return sample.expression
    if sample.task == "au":
        return "AUs " + (",".join(sample.aus) or "none")
    if sample.task == "va":
        return f"valence={sample.valence}, arousal={sample.arousal}"
    return f"ah={sample.ah}"


def check_samples(samples: list[Sample], options: BuildOptions, report: BuildReport) -> list[Sample]:
    """What no single line shows: the same sample twice (an exact repeat is dropped and counted; conflicting
    labels are a problem naming both lines, and with --skip-bad both are left out), and a video or image in two
    splits of one protocol (leakage: refused unless `allow_split_overlap`, then counted and listed)."""
    first: dict[str, Sample] = {}
    dropped: set[str] = set()
    kept = []
    for sample in samples:
        previous = first.get(sample.id)
        if previous is None:
            first[sample.id] = sample
            kept.append(sample)
            continue
        same_media = all(getattr(previous, f) == getattr(sample, f) for f in _MEDIA_FIELDS)
        same_labels = all(getattr(previous, f) == getattr(sample, f) for f in (*_LABEL_FIELDS, "ah_frames"))
        if same_media and same_labels:
            repeat = f"{where(sample)}: repeats {where(previous)}"
            if repeat not in report.duplicates:
                report.duplicates.append(repeat)
            continue
        if same_media:
            here, there = _labels_of(sample), _labels_of(previous)
            differ = " (per-frame labels differ)" if here == there else ""
            reason = f"conflicting labels for {sample.id}: {here} here, {there} at {where(previous, sample)}{differ}"
        else:
            reason = f"a different sample with the same id {sample.id} as {where(previous, sample)}"
        complain(options, report, AnnotationError(sample.source_file, sample.source_line, "", reason))
        dropped.add(sample.id)
    kept = [s for s in kept if s.id not in dropped]
    _check_split_overlap(kept, options, report)
    return kept


def _check_split_overlap(samples: list[Sample], options: BuildOptions, report: BuildReport) -> None:
    seen: dict[tuple, dict[str, Sample]] = {}
    for sample in samples:
        fold = re.match(r"(fold\d+)_", sample.split)  # DFEW/MAFW: the splits of one fold form a protocol
        key = sample.subject if sample.dataset == "abaw" else (sample.video or sample.image)
        if key:
            protocol = (sample.dataset, sample.task, fold.group(1) if fold else "", key)
            seen.setdefault(protocol, {}).setdefault(sample.split, sample)
    found = []
    for (_, task, _, key), by_split in seen.items():
        if len(by_split) > 1:
            (split, first), *others = sorted(by_split.items())
            also = ", ".join(f"{s} ({where(x, first, options.root)})" for s, x in others)
            shown = key[len(str(options.root)) + 1 :] if key.startswith(f"{options.root}/") else key
            found.append(f"{where(first)}: {shown} ({task}, {split}) is also in {also}")
    if found and not options.allow_split_overlap:
        more = f" ({len(found) - 1} more)" if len(found) > 1 else ""
        raise ValueError(f"{found[0]}{more}: split overlap leaks into evaluation; --allow-split-overlap builds anyway")
    report.overlaps += found


def prompt(task: str, media_part: dict, labels: tuple[str, ...] = (), transcript: str = "") -> list[dict]:
    text = question(task, labels)
    if transcript:
        text = f'Transcript: "{transcript}"\n{text}'
    return [{"role": "user", "content": [media_part, {"type": "text", "text": text}]}]


def windows(n: int, length: int, stride: int) -> Iterator[tuple[int, int]]:
    """[start, end) windows over n frames; the last one is aligned to the end so every frame is covered."""
    if n <= 0:
        return
    if n <= length:
        yield 0, n
        return
    starts = list(range(0, n - length + 1, stride))
    if starts[-1] + length < n:
        starts.append(n - length)
    for start in starts:
        yield start, start + length


def majority(values: list[int]) -> int:
    """The most frequent value; ties go to the value seen first."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def expression_sample(dataset, split, name, kind: str, media, label, labels, options, source, line_no):
    """A whole-image or whole-video expression sample (RAF-DB, AffectNet, DFEW, MAFW)."""
    media = str(media)
    sample = Sample(
        id=f"{dataset}/{split}/{name}",
        dataset=dataset,
        split=split,
        task="expr",
        expression=label,
        source_file=str(source),
        source_line=line_no,
        **({"image": media} if kind == "image" else {"video": media, "audio": media}),
    )
    sample.prompt = prompt("expr", {"type": kind, kind: media}, labels)
    sample.target, sample.target_grounding = build_target(sample.id, "expr", label, None, seed=options.seed)
    return sample
