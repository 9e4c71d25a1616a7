"""What the builders share: options, the build report, line reading with `--skip-bad`, prompts, clip windows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    bad_lines: list[str] = field(default_factory=list)
    missing_media: list[str] = field(default_factory=list)
    invalid_frames: int = 0
    total_frames: int = 0
    fallback_frames: int = 0
    skipped_clips: int = 0

    def missing(self, path) -> None:
        self.missing_media.append(str(path))


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-empty lines of a text file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield line_no, line


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
