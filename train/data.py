"""The SFT collator: rows of a dataset written by `emoreason data build` (read by `data_builders.read.load_split`,
which checks every row before training starts) into training batches, the question's wording varied per sample.

Trainers never reformat data (ARCHITECTURE.md, decision 7): rows keep the builder's schema, and the prompt (a JSON
list of chat messages) names every media file, which our processor reads.
"""

from __future__ import annotations


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

        from data_builders.read import conversation

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
