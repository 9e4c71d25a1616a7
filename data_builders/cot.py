"""Chain-of-thought targets: observations, interpretation, conclusion, grounded only in the sample's own labels.

Observations name the AUs labelled active (FACS names, intensity words where intensities are known) and the
vocal or transcript cues the sample has. The interpretation relates them to the EMFACS prototypes, naming only
active AUs. The conclusion is the answer in `mllm.output`'s format. A sample without AU labels gets an
explanation from what is known and is marked `target_grounding="labels"`.

The reasoning never argues against its answer: when the active AUs share nothing with the answer's prototype (an
expression labelled Happiness whose face shows AU5 and AU23, say), the target says plainly that the units are not
the usual ones for the answer, names no other emotion, and is marked `target_grounding="conflict"`.
"""

from __future__ import annotations

import hashlib
import random

from mllm.labels import EMFACS, FACS_NAMES, best_prototype
from mllm.output import format_completion

OBSERVE = (
    "Observations: {aus}.",
    "I can see {aus}.",
    "The face shows {aus}.",
)
NO_AUS = (
    "Observations: no facial action unit is active; the face is at rest.",
    "No action unit is active: the features stay relaxed.",
)
UNKNOWN_AUS = (
    "No action-unit annotation exists for this sample, so the reasoning rests on its labels alone.",
    "Action units are not annotated here; I reason from what is known about the sample.",
)
INTERPRET_MATCH = (
    "Together, {aus} are part of the {label} prototype.",
    "{aus} form the core of how {label} shows on a face.",
    "This combination ({aus}) is typical of {label}.",
)
INTERPRET_NONE = (
    "None of the active units belongs to a basic-emotion prototype, so they do not point to one emotion.",
    "The active units do not combine into a basic-emotion prototype.",
)
INTERPRET_CONFLICT = (
    "The active units are not the usual ones for {label}.",
    "These units are not part of how {label} usually shows on a face.",
)
INTERPRET_ABSENT = (
    "None of the units usual for {label} is active.",
    "The units that usually show {label} are not active.",
)
INTERPRET_NO_PROTOTYPE = (
    "The label {label} has no fixed action-unit prototype, so the units alone do not decide it.",
    "There is no single action-unit pattern for {label}; the units alone do not decide it.",
)
INTERPRET_VALENCE_CONFLICT = (
    "The active units do not match the sign of the valence.",
    "The active units are not the usual ones for this valence.",
)
# Sign of each prototype's valence; Surprise goes either way.
PROTOTYPE_VALENCE = {"Happiness": 1, "Sadness": -1, "Fear": -1, "Anger": -1, "Disgust": -1, "Contempt": -1}
CONCLUDE = ("So the answer is {answer}.", "Conclusion: {answer}.", "Therefore: {answer}.")


def intensity_word(value: float) -> str:
    """FACS intensity letters A-E as words, from OpenFace's 0-5 scale."""
    for bound, word in ((1.0, "trace"), (2.0, "slight"), (3.0, "marked"), (4.0, "pronounced")):
        if value < bound:
            return word
    return "extreme"


def _au_phrase(aus: list[str], intensity: dict[str, float]) -> str:
    parts = []
    for au in aus:
        text = f"{au} ({FACS_NAMES.get(au, 'action unit')})"
        if au in intensity:
            text = f"{intensity_word(intensity[au])} {text}"
        parts.append(text)
    return ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]


def _rng(sample_id: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def build_target(
    sample_id: str,
    task: str,
    answer,
    aus: list[str] | None,
    intensity: dict[str, float] | None = None,
    cues: dict[str, str] | None = None,
    transcript: str = "",
    seed: int = 0,
) -> tuple[str, str]:
    """(completion, grounding): `aus` None means not annotated; [] means annotated, none active."""
    rng = _rng(sample_id, seed)
    intensity = intensity or {}
    sentences = []
    if aus is None:
        sentences.append(rng.choice(UNKNOWN_AUS))
        grounding = "labels"
    elif not aus:
        sentences.append(rng.choice(NO_AUS))
        grounding = "au"
    else:
        ordered = sorted(aus, key=lambda a: int(a[2:]))  # FACS numbering (ABAW_AUS is in that order too)
        sentences.append(rng.choice(OBSERVE).format(aus=_au_phrase(ordered, intensity)))
        grounding = "au"
    for modality, cue in sorted((cues or {}).items()):
        if cue:
            sentences.append(f"The {modality} shows: {cue.rstrip('.')}.")
    if transcript:
        sentences.append(f'The speaker says: "{transcript.strip()[:300]}".')
    if aus is not None:
        sentence, conflict = _interpretation(task, answer, aus, rng)
        if sentence:
            sentences.append(sentence)
        if conflict:
            grounding = "conflict"
    from mllm.output import format_answer

    sentences.append(rng.choice(CONCLUDE).format(answer=format_answer(task, answer)))
    return format_completion(task, " ".join(sentences), answer), grounding


def _label_words(label: str) -> str:
    return "a neutral face" if label == "Neutral" else label.lower()


def _interpretation(task: str, answer, aus: list[str], rng: random.Random) -> tuple[str, bool]:
    """(the sentence relating the active AUs to prototypes, whether they conflict with the answer)."""
    if task == "expr":
        if answer in EMFACS:
            shared = [a for a in aus if a in EMFACS[answer]]
            if shared:
                return rng.choice(INTERPRET_MATCH).format(aus=" and ".join(shared), label=answer.lower()), False
            template = INTERPRET_CONFLICT if aus else INTERPRET_ABSENT
            return rng.choice(template).format(label=answer.lower()), True
        if not aus:
            return "", False
        if answer == "Neutral":
            # Units of an emotion's prototype argue against a neutral face; other units (lips part, say) do not.
            if best_prototype(aus)[0] is None:
                return rng.choice(INTERPRET_NONE), False
            return rng.choice(INTERPRET_CONFLICT).format(label=_label_words(answer)), True
        return rng.choice(INTERPRET_NO_PROTOTYPE).format(label=str(answer).lower()), False
    if not aus:
        return "", False
    label, shared = best_prototype(aus)
    if task == "va" and label is not None:
        valence = float(answer[0])
        sign = PROTOTYPE_VALENCE.get(label, 0)
        if sign * valence < -0.2:  # a prototype of the opposite valence would argue against the answer
            return rng.choice(INTERPRET_VALENCE_CONFLICT), True
    if shared:
        return rng.choice(INTERPRET_MATCH).format(aus=" and ".join(shared), label=label.lower()), False
    return rng.choice(INTERPRET_NONE), False
