"""What every reward reads: the completion's text and its sample's labels, one `Row` per completion.

TRL calls a reward as `reward(completions, **columns)`: completions are strings, or (conversational datasets)
lists of messages `[{"role": "assistant", "content": ...}]`; every dataset column comes as a list with one value
per completion, beside extras (`prompts`, `completion_ids`, `trainer_state`) that the rewards ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

from mllm.output import Parsed, ParseError, parse

DEFAULT_LABEL_SPACE = "abaw_expr"
UNKNOWN_VA = -5.0


@dataclass(frozen=True)
class Row:
    """One completion with its sample's labels. `aus` is None where the sample has no AU annotation
    (`target_grounding == "labels"`, data_builders/cot.py)."""

    text: str
    task: str
    label_space: str
    expression: str
    aus: tuple[str, ...] | None
    valence: float
    arousal: float
    ah: int

    def parse(self) -> Parsed | ParseError:
        return parse(self.text, self.task, self.label_space)

    @property
    def va_known(self) -> bool:
        return -1.0 <= self.valence <= 1.0 and -1.0 <= self.arousal <= 1.0

    @property
    def ah_known(self) -> bool:
        return self.ah in (0, 1)


def completion_text(completion) -> str:
    """The text of a completion: a string, or the concatenated content of a message list (string contents, or
    lists of `{"type": "text", "text": ...}` parts).

    >>> completion_text([{"role": "assistant", "content": "<think>x</think><answer>Fear</answer>"}])
    '<think>x</think><answer>Fear</answer>'
    """
    if isinstance(completion, str):
        return completion
    texts = []
    for message in completion:
        content = message.get("content") or ""
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text", "") for part in content if part.get("type", "text") == "text")
    return "".join(texts)


def rows(completions: list, columns: dict[str, list]) -> list[Row]:
    """One `Row` per completion. `task` is required; a missing `label_space` column means "abaw_expr", a missing
    `target_grounding` means "au" where an `aus` column exists and "labels" where none does, other missing
    columns mean unknown labels."""
    n = len(completions)
    if "task" not in columns:
        raise ValueError("rewards need the dataset's 'task' column")

    def column(name: str, default) -> list:
        values = columns.get(name)
        if values is None:
            return [default] * n
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
        return list(values)

    grounding = column("target_grounding", "au" if "aus" in columns else "labels")
    return [
        Row(
            text=completion_text(completion),
            task=task,
            label_space=space or DEFAULT_LABEL_SPACE,
            expression=expression or "",
            aus=None if ground == "labels" else tuple(aus or ()),
            valence=UNKNOWN_VA if valence is None else float(valence),
            arousal=UNKNOWN_VA if arousal is None else float(arousal),
            ah=-1 if ah is None else int(ah),
        )
        for completion, task, space, expression, aus, ground, valence, arousal, ah in zip(
            completions,
            column("task", None),
            column("label_space", DEFAULT_LABEL_SPACE),
            column("expression", ""),
            column("aus", None),
            grounding,
            column("valence", UNKNOWN_VA),
            column("arousal", UNKNOWN_VA),
            column("ah", -1),
            strict=True,
        )
    ]
