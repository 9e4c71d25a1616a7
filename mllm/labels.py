"""Label spaces, in one registry. Datasets map their own codes onto these names; the model answers with them."""

from __future__ import annotations

LABEL_SPACES: dict[str, tuple[str, ...]] = {
    # ABAW (Aff-Wild2) EXPR, in the order of its integer codes 0-7.
    "abaw_expr": ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"),
    # RAF-DB basic, DFEW, FERV39k: seven basic expressions.
    "basic7": ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"),
    # AffectNet 8 adds contempt.
    "affectnet8": ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"),
    "mafw11": (
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Neutral",
        "Sadness",
        "Surprise",
        "Contempt",
        "Anxiety",
        "Helplessness",
        "Disappointment",
    ),
}

# ABAW's 12 action units, in the order of its annotation columns, with their FACS names.
ABAW_AUS: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
FACS_NAMES: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU9": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU12": "lip corner puller",
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU17": "chin raiser",
    "AU20": "lip stretcher",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU28": "lip suck",
    "AU45": "blink",
}


# EMFACS prototypes (Friesen & Ekman), as sets of AU numbers.
EMFACS: dict[str, tuple[str, ...]] = {
    "Happiness": ("AU6", "AU12"),
    "Sadness": ("AU1", "AU4", "AU15"),
    "Surprise": ("AU1", "AU2", "AU5", "AU26"),
    "Fear": ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
    "Anger": ("AU4", "AU5", "AU7", "AU23"),
    "Disgust": ("AU9", "AU15", "AU16", "AU10"),
    "Contempt": ("AU12", "AU14"),
}


def best_prototype(aus: list[str], exclude: tuple[str, ...] = ()) -> tuple[str | None, list[str]]:
    """The EMFACS prototype sharing most AUs with `aus` (ties: the larger share of the prototype)."""
    best, shared = None, []
    for label, prototype in EMFACS.items():
        if label in exclude:
            continue
        common = [a for a in aus if a in prototype]
        if len(common) > len(shared) or (
            common
            and len(common) == len(shared)
            and best
            and len(common) / len(prototype) > len(shared) / len(EMFACS[best])
        ):
            best, shared = label, common
    return best, shared


def label_space(name: str) -> tuple[str, ...]:
    if name not in LABEL_SPACES:
        raise ValueError(f"unknown label space {name!r}; valid: {sorted(LABEL_SPACES)}")
    return LABEL_SPACES[name]
