"""The one instruction schema every builder writes, and the atomic, deterministic writer.

A row is one sample (a clip, an image, a video or a segment) asked about one task. Per-frame labels keep a
validity mask each, so evaluation can map clip predictions back to every annotated frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

TASKS = ("expr", "au", "va", "ah")


class AnnotationError(ValueError):
    """A malformed annotation: names the file, the 1-based line number (where one exists) and the line's text."""

    def __init__(self, path, line_no: int | None, text: str, reason: str):
        self.path, self.line_no, self.text, self.reason = str(path), line_no, text, reason
        where = f"{path}:{line_no}" if line_no is not None else str(path)
        shown = f": {text.strip()[:200]!r}" if text.strip() else ""
        super().__init__(f"{where}: {reason}{shown}")


@dataclass
class Sample:
    id: str
    dataset: str
    split: str
    task: str
    subject: str = ""
    video: str = ""
    image: str = ""
    audio: str = ""
    frames: list[str] = field(default_factory=list)  # image paths of the frames the clip covers (ABAW crops)
    frame_indices: list[int] = field(default_factory=list)  # annotation frame numbers the clip covers
    start_s: float = -1.0  # time window in the video, -1 when the whole file
    end_s: float = -1.0
    # Labels. Clip-level values plus per-frame values with validity masks; -1 / empty where unknown.
    expression: str = ""
    expression_frames: list[int] = field(default_factory=list)
    expression_valid: list[bool] = field(default_factory=list)
    aus: list[str] = field(default_factory=list)  # AUs labelled active for the clip
    au_frames: list[list[int]] = field(default_factory=list)
    au_valid: list[bool] = field(default_factory=list)
    au_intensity: dict[str, float] = field(default_factory=dict)  # AU -> 0-5 (OpenFace _r), where known
    valence: float = -5.0
    arousal: float = -5.0
    va_frames: list[list[float]] = field(default_factory=list)
    va_valid: list[bool] = field(default_factory=list)
    ah: int = -1  # ambivalence/hesitancy: 1 present, 0 absent, -1 unknown
    ah_frames: list[int] = field(default_factory=list)  # per frame, for frame_indices (BAH frame-level lines)
    transcript: str = ""
    cues: dict[str, str] = field(default_factory=dict)  # modality -> cue text (BAH)
    # Instruction.
    prompt: list[dict] = field(default_factory=list)
    target: str = ""
    # "au": the explanation rests on labelled AUs that support the answer; "labels": no AU labels, explained from
    # what is known; "conflict": the active AUs are not the usual ones for the answer (and the target says so).
    target_grounding: str = ""
    source_file: str = ""
    source_line: int = -1
    meta: dict[str, object] = field(default_factory=dict)  # per-sample metadata (BAH participants.csv columns)

    def to_row(self) -> dict:
        # Shallow on purpose: dataclasses.asdict deep-copies every list, which dominated writing time.
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["prompt"] = json.dumps(self.prompt)  # chat messages with mixed part types: one JSON string
        row["au_intensity"] = json.dumps(self.au_intensity, sort_keys=True)
        row["cues"] = json.dumps(self.cues, sort_keys=True)
        row["meta"] = json.dumps(self.meta, sort_keys=True)
        return row


def features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "dataset": Value("string"),
            "split": Value("string"),
            "task": Value("string"),
            "subject": Value("string"),
            "video": Value("string"),
            "image": Value("string"),
            "audio": Value("string"),
            "frames": Sequence(Value("string")),
            "frame_indices": Sequence(Value("int64")),
            "start_s": Value("float64"),
            "end_s": Value("float64"),
            "expression": Value("string"),
            "expression_frames": Sequence(Value("int64")),
            "expression_valid": Sequence(Value("bool")),
            "aus": Sequence(Value("string")),
            "au_frames": Sequence(Sequence(Value("int64"))),
            "au_valid": Sequence(Value("bool")),
            "au_intensity": Value("string"),
            "valence": Value("float64"),
            "arousal": Value("float64"),
            "va_frames": Sequence(Sequence(Value("float64"))),
            "va_valid": Sequence(Value("bool")),
            "ah": Value("int64"),
            "ah_frames": Sequence(Value("int64")),
            "transcript": Value("string"),
            "cues": Value("string"),
            "prompt": Value("string"),
            "target": Value("string"),
            "target_grounding": Value("string"),
            "source_file": Value("string"),
            "source_line": Value("int64"),
            "meta": Value("string"),
        }
    )


def write_dataset(samples: list[Sample], out: str | Path, files: dict[str, str] | None = None, protect=()):
    """Write a DatasetDict (one split per `Sample.split`) to `out`, atomically (`mllm.outputs.atomic_dir`): it is
    built under a temporary name beside `out` and renamed into place, so an interrupted build leaves the previous
    dataset (or nothing). `out` must be new, empty or a dataset this tool wrote (`claim_output_dir`'s rules, with
    `protect` the inputs); the written folder carries the output marker and `files` (name -> text), and leftovers
    of killed builds beside it are removed. Rows are sorted by id, so the same input and seed give the same bytes."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    from mllm.outputs import MARKER, atomic_dir, claim_output_dir

    out = claim_output_dir(out, protect=protect, kind="dataset")
    clean_litter_beside(out)
    splits: dict[str, list[dict]] = {}
    for sample in sorted(samples, key=lambda s: (s.split, s.id)):
        splits.setdefault(sample.split, []).append(sample.to_row())
    import pyarrow as pa

    schema = features()
    # pyarrow converts the rows in C++; `Dataset.from_list` would encode them one by one in Python.
    dataset = DatasetDict(
        {
            name: Dataset(pa.Table.from_pylist(rows, schema=schema.arrow_schema), info=DatasetInfo(features=schema))
            for name, rows in splits.items()
        }
    )
    with atomic_dir(out) as tmp:
        dataset.save_to_disk(str(tmp))
        for name, text in {MARKER: (out / MARKER).read_text(encoding="utf-8"), **(files or {})}.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return dataset


def clean_litter_beside(out: Path) -> None:
    """The dataset folder is replaced as a whole, so its temporaries live beside it: remove those of killed runs
    (`mllm.outputs.clean_litter`), and the `.NAME.building-*` temporaries of the builds before it (always partial
    output, never the only copy of a dataset)."""
    import shutil

    from mllm.outputs import clean_litter

    clean_litter(out.parent)
    for entry in out.parent.iterdir():
        if entry.name.startswith(f".{out.name}.building-") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
