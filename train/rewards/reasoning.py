"""Rewards for the reasoning: are the AUs it cites the labelled ones, and does it support its own answer?

>>> done = "<think>AU6 and AU12 are active: happiness.</think><answer>Happiness</answer>"
>>> au_f1([done], task=["expr"], aus=[["AU6", "AU12"]], target_grounding=["au"])
[1.0]
>>> consistency([done], task=["expr"], target_grounding=["au"])
[1.0]
"""

from __future__ import annotations

from mllm import scoring
from mllm.labels import label_space
from train.rewards.rows import Row, rows


def au_f1(completions, **columns) -> list[float | None]:
    """2 * F1 - 1, in [-1, 1], of the AUs cited in the think (for task "au", together with the answer's AUs)
    against the labelled active AUs: citing every AU is punished, citing none while some are active gives -1.
    -1.0 where the completion does not parse; None where the sample has no AU annotation
    (`target_grounding == "labels"`).

    >>> stuffed = "<think>AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26</think><answer>Happiness</answer>"
    >>> au_f1([stuffed, stuffed], task=["expr"] * 2, aus=[["AU6", "AU12"]] * 2, target_grounding=["au", "labels"])
    [-0.4285714285714286, None]
    """
    scores: list[float | None] = []
    for row in rows(completions, columns):
        if row.aus is None:
            scores.append(None)
            continue
        parsed = row.parse()
        if not parsed.ok:
            scores.append(-1.0)
            continue
        cited = set(scoring.cited_aus(parsed.think))
        if row.task == "au":
            cited |= set(parsed.answer)
        scores.append(2 * scoring.au_f1(cited, row.aus) - 1)
    return scores


def consistency(completions, **columns) -> list[float | None]:
    """Task "expr": 1.0 where the think supports its answer, 0.0 otherwise (and where unparseable). Supporting
    means naming no other label of the label space (`scoring.names_other_label`) and citing AUs that support the
    answer under EMFACS (`scoring.supports`; labels without a prototype skip this part). The AU part counts only
    where the sample's labelled AUs are known and themselves support its label: elsewhere ("labels" and
    "conflict" samples) the reference reasoning cannot pass it, and demanding it would pay the model to invent
    or drop AUs. None for other tasks.

    >>> consistency(["<think>AU6 and AU12: this is sadness.</think><answer>Happiness</answer>"], task=["expr"])
    [0.0]
    """
    scores: list[float | None] = []
    for row in rows(completions, columns):
        if row.task != "expr":
            scores.append(None)
            continue
        parsed = row.parse()
        if not parsed.ok:
            scores.append(0.0)
            continue
        labels = label_space(row.label_space)
        consistent = not scoring.names_other_label(parsed.think, parsed.answer, labels)
        if _au_support_expected(row, labels):
            supported = scoring.supports(parsed.answer, scoring.cited_aus(parsed.think), among=labels)
            consistent = consistent and supported is not False
        scores.append(1.0 if consistent else 0.0)
    return scores


def _au_support_expected(row: Row, labels: tuple[str, ...]) -> bool:
    """Whether an honest, correct completion can cite AUs that support its answer: the sample's AUs are labelled
    and support its label (or the label is unknown)."""
    if row.aus is None:
        return False
    return not row.expression or scoring.supports(row.expression, row.aus, among=labels) is not False
