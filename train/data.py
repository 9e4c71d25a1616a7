"""The training view of a dataset written by `emoreason data build`, and the SFT collator.

Trainers never reformat data (ARCHITECTURE.md, decision 7): rows keep the builder's schema. The view adds one
column, `label_space` (the labels the answers are checked against), and leaves out the media-path columns
(`image`, `video`, `audio`, `frames`) that TRL would take for a vision dataset of its own kind; the prompt (a JSON
list of chat messages) still names every media file, and our processor reads them.

Every row is checked before training starts: the prompt is a chat, the target follows the output grammar for
the row's task and label space. A bad row stops the run with one line naming the dataset, split and sample id.
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


def vary_question(messages: list[dict], task: str, label_space: str, rng) -> list[dict]:
    """`messages` with the task's question (the text part the data builders wrote, `mllm.output.question`) asked
    in a wording drawn by `rng` from the dataset's own and the task's paraphrases; other text is left as it is."""
    from mllm.labels import label_space as labels_of
    from mllm.output import PARAPHRASES, question

    labels = labels_of(label_space) if task == "expr" else ()
    asked = question(task, labels)
    k = rng.randrange(len(PARAPHRASES[task]) + 1)
    wording = asked if k == 0 else question(task, labels, variant=k - 1)
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            content = [{**p, "text": wording} if p.get("type") == "text" and p.get("text") == asked else p
                       for p in content]  # fmt: skip
            message = {**message, "content": content}
        out.append(message)
    return out


def conversation(row: dict, with_target: bool) -> list[dict]:
    messages = json.loads(row["prompt"])
    if with_target:
        messages = [*messages, {"role": "assistant", "content": row["target"]}]
    return messages


class SFTCollator:
    """Rows -> a training batch: our processor renders the chats with their media, labels only the assistant
    turn (the rest -100), pads on the right. A row longer than `max_length` tokens is refused, naming it: cutting
    it would drop the answer or the media tokens' partners."""

    def __init__(self, processor, max_length: int | None, vary_questions_seed: int | None = None):
        self.processor = processor
        self.max_length = max_length
        self.seed = vary_questions_seed

    def _conversation(self, row: dict) -> list[dict]:
        import random

        messages = conversation(row, with_target=True)
        if self.seed is None:
            return messages
        # One wording per sample, from the seed and the sample's id alone: a resumed run asks exactly what the
        # uninterrupted one would (a drawing stream would restart on resume).
        rng = random.Random(f"{self.seed}:{row['id']}")
        return vary_question(messages, row["task"], row["label_space"], rng)

    def __call__(self, rows: list[dict]) -> dict:
        from mllm.parts import ProcessorInputError

        try:
            batch = self.processor([self._conversation(r) for r in rows], return_labels=True, padding_side="right")
        except (ProcessorInputError, OSError, ValueError) as exc:
            # Find the row: the message names the file, this names the sample.
            ids = ", ".join(repr(r["id"]) for r in rows)
            raise ValueError(f"samples {ids}: {exc}") from exc
        if self.max_length is not None:
            lengths = batch["attention_mask"].sum(dim=1)
            for row, length in zip(rows, lengths.tolist(), strict=True):
                if length > self.max_length:
                    raise ValueError(
                        f"sample {row['id']!r}: {length} tokens, more than max_length {self.max_length} (raise "
                        "max_length, or sample fewer frames; nothing is truncated)"
                    )
        return batch
