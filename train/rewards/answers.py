"""Rewards for the answer: does the completion follow the grammar, and is its answer right?

Each is `reward(completions, **columns) -> list[float | None]`, None where the sample has nothing to score
(another task, an unknown label); TRL leaves None out of the weighted sum.

    >>> done = "<think>AU6 and AU12 pull the cheeks up.</think><answer>Happiness</answer>"
    >>> format([done, "Happiness"], task=["expr", "expr"])
    [1.0, 0.0]
"""

from __future__ import annotations

from mllm.scoring import expression_correct, va_closeness
from train.rewards.rows import rows


def format(completions, **columns) -> list[float]:  # shadows the builtin here only: TRL logs rewards by name
    """1.0 where the completion parses for its task and label space, else 0.0.

    >>> format(["<think>x</think><answer>happiness</answer>", "<think>x</think>"], task=["expr", "expr"])
    [1.0, 0.0]
    """
    return [1.0 if row.parse().ok else 0.0 for row in rows(completions, columns)]


def expression(completions, **columns) -> list[float | None]:
    """Task "expr" with a known label: 1.0 where the answer is the label, 0.0 where it is wrong or unparseable
    (a label named only in the think earns nothing). None for other tasks and unknown labels.

    >>> expression(["<think>x</think><answer>Fear</answer>"] * 3, task=["expr", "expr", "au"],
    ...            expression=["Fear", "Anger", "Fear"])
    [1.0, 0.0, None]
    """
    scores: list[float | None] = []
    for row in rows(completions, columns):
        if row.task != "expr" or not row.expression:
            scores.append(None)
            continue
        parsed = row.parse()
        scores.append(1.0 if parsed.ok and expression_correct(parsed.answer, row.expression) else 0.0)
    return scores


def va(completions, **columns) -> list[float | None]:
    """Task "va" with known valence and arousal: `va_closeness` of the answer, 0.0 where unparseable; else None.

    >>> va(["<think>x</think><answer>valence=0.5, arousal=0.0</answer>"], task=["va"], valence=[0.5], arousal=[0.4])
    [0.9]
    """
    scores: list[float | None] = []
    for row in rows(completions, columns):
        if row.task != "va" or not row.va_known:
            scores.append(None)
            continue
        parsed = row.parse()
        scores.append(va_closeness(parsed.answer, (row.valence, row.arousal)) if parsed.ok else 0.0)
    return scores


def ah(completions, **columns) -> list[float | None]:
    """Task "ah" with a known label (0 absent, 1 present): 1.0 right, 0.0 wrong or unparseable; else None.

    >>> ah(["<think>x</think><answer>present</answer>"] * 3, task=["ah"] * 3, ah=[1, 0, -1])
    [1.0, 0.0, None]
    """
    scores: list[float | None] = []
    for row in rows(completions, columns):
        if row.task != "ah" or not row.ah_known:
            scores.append(None)
            continue
        parsed = row.parse()
        scores.append(1.0 if parsed.ok and parsed.answer == bool(row.ah) else 0.0)
    return scores
