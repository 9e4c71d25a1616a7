"""A length guard: completions longer than a budget are penalised, linearly, so rambling never pays."""

from __future__ import annotations

from collections.abc import Callable

from train.rewards.rows import completion_text


def length_guard(max_chars: int = 1200) -> Callable[..., list[float]]:
    """A reward named `length`: 0.0 up to `max_chars` characters, falling linearly to -1.0 at twice that, -1.0
    beyond. Never None: it applies to every task.

    >>> length = length_guard(max_chars=10)
    >>> length(["x" * 10, "x" * 15, "x" * 20, "x" * 99])
    [0.0, -0.5, -1.0, -1.0]
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")

    def length(completions, **columns) -> list[float]:
        scores = []
        for completion in completions:
            excess = len(completion_text(completion)) - max_chars
            penalty = min(1.0, max(0.0, excess / max_chars))
            scores.append(-penalty if penalty else 0.0)
        return scores

    return length
