"""Per-sample scorers, shared by the GRPO rewards (train/rewards) and batch evaluation (eval/), so training and
evaluation can never disagree on what "right" means. Pure functions of parsed answers and labels; the parsing
itself is `mllm.output.parse`.

    >>> cited_aus("AU06 (cheek raiser) and au 12 are active; AU6 again")
    ('AU6', 'AU12')
    >>> au_f1(("AU6", "AU12"), ("AU6",))
    0.6666666666666666
    >>> supports("Happiness", ("AU6", "AU12"))
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mllm.labels import EMFACS

# "AU6", "AU 6", "AU06", "au12", "AU12C" (FACS intensity letter); not "TAU12", "AUX" or "AU123".
_AU_MENTION = re.compile(r"(?<![A-Za-z0-9])AU ?0*([1-9][0-9]?)(?![0-9])", re.IGNORECASE)

# The words that name each label in a reasoning text (the label itself first). "Other" is a catch-all class whose
# name is an everyday word ("the other units"), so it is never looked for. Labels missing here are looked for by
# their own name.
EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "Neutral": ("neutral", "expressionless"),
    "Anger": ("anger", "angry", "furious", "rage"),
    "Disgust": ("disgust", "disgusted", "revulsion"),
    "Fear": ("fear", "fearful", "afraid", "scared", "frightened"),
    "Happiness": ("happiness", "happy", "joy", "joyful"),
    "Sadness": ("sadness", "sad", "sorrow", "unhappy"),
    "Surprise": ("surprise", "surprised", "astonished", "startled"),
    "Contempt": ("contempt", "contemptuous", "disdain"),
    "Anxiety": ("anxiety", "anxious", "nervous"),
    "Helplessness": ("helplessness", "helpless"),
    "Disappointment": ("disappointment", "disappointed"),
    "Other": (),
}


def cited_aus(text: str) -> tuple[str, ...]:
    """The action units a text mentions, canonical ("AU6"), once each, in FACS number order. A mention counts
    whatever is said about it ("AU12 is not active" cites AU12); FACS names without a number do not count.

    >>> cited_aus("au 12, AU6 and AU06; TAU4, AUX")
    ('AU6', 'AU12')
    """
    numbers = {int(match.group(1)) for match in _AU_MENTION.finditer(text)}
    return tuple(f"AU{n}" for n in sorted(numbers))


def au_f1(predicted: Iterable[str], labelled: Iterable[str]) -> float:
    """Binary F1 of a predicted AU set against the labelled-active set; 1.0 when both are empty.

    >>> au_f1(["AU6", "AU12"], ["AU6", "AU12"]), au_f1([], []), au_f1([], ["AU4"]), au_f1(["AU4"], [])
    (1.0, 1.0, 0.0, 0.0)
    """
    predicted, labelled = set(predicted), set(labelled)
    if not predicted and not labelled:
        return 1.0
    true_positives = len(predicted & labelled)
    return 2 * true_positives / (len(predicted) + len(labelled))


def expression_correct(answer: str | None, label: str) -> bool:
    """Whether an expression answer is the label (case-insensitive; None, an unparseable answer, is never right).

    >>> expression_correct("Happiness", "happiness"), expression_correct(None, "Happiness")
    (True, False)
    """
    return answer is not None and bool(label) and answer.strip().casefold() == label.strip().casefold()


def va_closeness(predicted: tuple[float, float], truth: tuple[float, float]) -> float:
    """1 - mean absolute error / 2 over valence and arousal, in [0, 1]; predictions are clipped to [-1, 1].

    >>> va_closeness((0.5, 0.0), (0.5, 0.0)), va_closeness((1.0, 1.0), (-1.0, -1.0)), va_closeness((3, 0), (1, 0.5))
    (1.0, 0.0, 0.875)
    """
    errors = [abs(min(1.0, max(-1.0, float(p))) - float(t)) for p, t in zip(predicted, truth, strict=True)]
    return min(1.0, max(0.0, 1.0 - sum(errors) / len(errors) / 2))


def supports(label: str, aus: Iterable[str], among: Iterable[str] | None = None) -> bool | None:
    """Whether cited AUs support an expression label under EMFACS. For a label with a prototype: at least one
    cited AU is in it, and no other prototype shares strictly more of the cited AUs. For "Neutral": no cited AU
    belongs to any prototype. None for labels without a prototype (Other, Anxiety, ...). `among` limits the
    competing prototypes to a label space's labels (default: every prototype).

    >>> supports("Sadness", ["AU1", "AU4", "AU15"]), supports("Sadness", ["AU6", "AU12", "AU4"])
    (True, False)
    >>> supports("Neutral", ["AU25"]), supports("Neutral", ["AU12"]), supports("Other", ["AU12"])
    (True, False, None)
    """
    cited = set(aus)
    competing = {name: set(prototype) for name, prototype in EMFACS.items()}
    if among is not None:
        wanted = set(among) | {label}
        competing = {name: prototype for name, prototype in competing.items() if name in wanted}
    if label == "Neutral":
        return not any(cited & prototype for prototype in competing.values())
    if label not in competing:
        return None
    shared = len(cited & competing[label])
    return shared > 0 and all(len(cited & prototype) <= shared for prototype in competing.values())


def other_labels_named(think: str, answer: str | None, labels: Iterable[str]) -> tuple[str, ...]:
    """The labels, other than the answer, that a reasoning text names by a whole word of theirs (`EMOTION_WORDS`),
    case-insensitively, negated or not.

    >>> other_labels_named("This looks like sadness, not a neutral face.", "Happiness", ["Sadness", "Neutral"])
    ('Sadness', 'Neutral')
    """
    own = set(_words(answer)) if answer else set()
    named = []
    for label in labels:
        if answer and label.casefold() == answer.casefold():
            continue
        words = [word for word in _words(label) if word not in own]
        if words and re.search(rf"\b(?:{'|'.join(map(re.escape, words))})\b", think, re.IGNORECASE):
            named.append(label)
    return tuple(named)


def names_other_label(think: str, answer: str | None, labels: Iterable[str]) -> bool:
    """Whether a reasoning text names a label other than its answer ("Other" is never looked for).

    >>> names_other_label("this looks like sadness", "Happiness", ["Happiness", "Sadness"])
    True
    >>> names_other_label("AU6 and AU12: happy, no sadder", "Happiness", ["Happiness", "Sadness"])
    False
    """
    return bool(other_labels_named(think, answer, labels))


_WORDS_BY_LABEL = {label.casefold(): words for label, words in EMOTION_WORDS.items()}


def _words(label: str) -> tuple[str, ...]:
    return _WORDS_BY_LABEL.get(label.casefold(), (label.casefold(),))
