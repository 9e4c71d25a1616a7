"""Reading a dataset written by `emoreason data build`: its label space, its splits' rows, a row's chat.

The writer knows the format, so the readers live beside it; training and evaluation read through here. Rows keep
the builder's schema (ARCHITECTURE.md, decision 7). `load_split` adds one column, `label_space` (the labels the
answers are checked against), and leaves out the media-path columns (`image`, `video`, `audio`, `frames`) that TRL
would take for a vision dataset of its own kind; the prompt (a JSON list of chat messages) still names every media
file, and our processor reads them.

Every row is checked when a split is read: the prompt is a chat, the target follows the output grammar for the
row's task and label space. A bad row stops the reader with one line naming the dataset, split and sample id.
"""

from __future__ import annotations

import json
from pathlib import Path

# Each builder's label space (`emoreason data build`'s build_report.json names the dataset and --classes).
DATASET_LABEL_SPACES = {
    "abaw": "abaw_expr",
    "bah": "abaw_expr",
    "rafdb": "basic7",
    "affectnet": "basic7",
    "dfew": "basic7",
    "mafw": "mafw11",
}
MEDIA_COLUMNS = ("image", "video", "audio", "frames")


def dataset_label_space(data_dir: Path) -> str:
    from data_builders.cli import REPORT_FILE

    if not (Path(data_dir) / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{data_dir}: not a dataset folder (write one with `emoreason data build`)")
    report_file = Path(data_dir) / REPORT_FILE
    try:
        report = json.loads(report_file.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{report_file}: missing or unreadable (is {data_dir} a `data build` output?)") from None
    dataset = report.get("dataset")
    if dataset == "affectnet" and int(report.get("options", {}).get("classes") or 7) == 8:
        return "affectnet8"
    if dataset not in DATASET_LABEL_SPACES:
        raise ValueError(f"{report_file}: unknown dataset {dataset!r}; valid: {sorted(DATASET_LABEL_SPACES)}")
    return DATASET_LABEL_SPACES[dataset]


def load_split(data_dir, split: str, tasks=None, max_samples: int | None = None, seed: int = 0):
    """The rows of one split as a `datasets.Dataset`, checked, with `label_space` added and media columns left out."""
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not (data_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{data_dir}: not a dataset folder (write one with `emoreason data build`)")
    space = dataset_label_space(data_dir)
    splits = load_from_disk(str(data_dir))
    if split not in splits:
        raise ValueError(f"{data_dir}: no split {split!r}; it has {', '.join(sorted(splits))}")
    rows = splits[split]
    if tasks:
        rows = rows.filter(lambda task: task in tasks, input_columns="task")
        if len(rows) == 0:
            raise ValueError(f"{data_dir} [{split}]: no sample of tasks {list(tasks)}")
    if max_samples is not None and max_samples < len(rows):
        rows = rows.shuffle(seed=seed).select(range(max_samples))
    rows = rows.remove_columns([c for c in MEDIA_COLUMNS if c in rows.column_names])
    rows = rows.add_column("label_space", [space] * len(rows))
    check_rows(rows, f"{data_dir} [{split}]")
    return rows


def check_rows(rows, where: str) -> None:
    from mllm.output import parse

    seen = set()
    for row in rows.select_columns(["id", "task", "prompt", "target", "label_space"]):
        sample = f"{where} sample {row['id']!r}"
        if row["id"] in seen:
            raise ValueError(f"{sample}: id appears twice")
        seen.add(row["id"])
        try:
            prompt = json.loads(row["prompt"])
        except ValueError:
            raise ValueError(f"{sample}: prompt is not JSON") from None
        if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
            raise ValueError(f"{sample}: prompt must be a non-empty list of chat messages")
        result = parse(row["target"], row["task"], row["label_space"])
        if not result.ok:
            raise ValueError(f"{sample}: target does not follow the output grammar ({result.error}: {result.message})")


def conversation(row: dict, with_target: bool) -> list[dict]:
    """A row's chat messages (its `prompt`), with its `target` as the assistant's answer when `with_target`."""
    messages = json.loads(row["prompt"])
    if with_target:
        messages = [*messages, {"role": "assistant", "content": row["target"]}]
    return messages
