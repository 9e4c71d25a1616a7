"""The output grammar: `<think>...</think><answer>...</answer>`, one answer format per task, one parser.

The rewards (train/) and the evaluation scorers (eval/) both call `parse`, so training and evaluation can never
disagree on what a completion says.

    >>> parse("<think>AU6 and AU12 are active.</think><answer>Happiness</answer>", "expr").answer
    'Happiness'
    >>> parse("<think>x</think><answer>Joy</answer>", "expr").error
    'unknown_label'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mllm.labels import ABAW_AUS, label_space

TASKS = ("expr", "au", "va", "ah")
AH_ANSWERS = ("present", "absent")

_COMPLETION = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL)
_TAG = re.compile(r"</?(think|answer)>")
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_VA = re.compile(rf"\A\s*valence\s*=\s*(?P<v>{_NUMBER})\s*,\s*arousal\s*=\s*(?P<a>{_NUMBER})\s*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """A completion that follows the grammar. `answer` is typed by task: a label (expr), a tuple of AU names
    (au), a (valence, arousal) pair (va), or True/False for ambivalence/hesitancy present/absent (ah)."""

    task: str
    think: str
    answer: object
    error: None = None
    ok: bool = True


@dataclass(frozen=True)
class ParseError:
    """What is wrong: `error` is a code (missing_think, missing_answer, truncated, nested_tags, trailing_text,
    empty_think, empty_answer, unknown_label, bad_format, out_of_range), `message` says it in words."""

    task: str
    error: str
    message: str
    ok: bool = False


QUESTIONS = {
    "expr": "Which facial expression does the person show? Reason about the facial action units, then answer with "
    "one label from: {labels}.",
    "au": "Which facial action units are active? Reason, then list them from: {labels}, or answer none.",
    "va": "Estimate the person's valence and arousal in [-1, 1]. Reason, then answer as valence=..., arousal=...",
    "ah": "Is ambivalence or hesitancy present in this video? Reason about face, voice and words, then answer "
    "present or absent.",
}


# Other wordings of each task's question, as people ask it (some name the labels, some do not). Training draws one
# per sample (seeded) in place of the dataset's question, so a trained model understands more than one phrasing;
# the dataset, `analyze`, the demo and evaluation keep the question above.
PARAPHRASES = {
    "expr": (
        "Which facial expression does the person show?",
        "What emotion is this person expressing? Think about the facial action units first, then choose one of: "
        "{labels}.",
        "How does this person feel? Reason from the face, then answer with one of {labels}.",
        "Describe the active action units, then name the expression ({labels}).",
        "What is the facial expression here?",
        "Classify the expression of this face. Options: {labels}.",
        "What emotion do you see?",
    ),
    "au": (
        "Which action units are active in this face?",
        "List the facial action units you can see, from: {labels}, or none.",
        "Which AUs does the person activate? Explain, then list them ({labels}).",
        "Describe the facial muscle movements as action units.",
    ),
    "va": (
        "How positive or negative, and how calm or excited, does this person look?",
        "Rate valence and arousal between -1 and 1.",
        "Give the person's valence and arousal, each in [-1, 1], after explaining why.",
        "Estimate the emotional valence and arousal of this person.",
    ),
    "ah": (
        "Does this person seem ambivalent or hesitant?",
        "Is there hesitancy or ambivalence in how this person speaks and looks?",
        "Tell me whether ambivalence or hesitancy is present, from face, voice and words.",
        "Is the person unsure or torn about what they say?",
    ),
}


def question(task: str, labels: tuple[str, ...] = (), variant: int | None = None) -> str:
    """The question asked for a task, worded once: the data builders write it into training prompts, and
    `emoreason analyze` and the demo ask it at inference. `variant` k picks the k-th of `PARAPHRASES[task]`
    instead (training varies the wording so that the model understands questions asked in other words)."""
    _check_task(task)
    text = QUESTIONS[task] if variant is None else PARAPHRASES[task][variant % len(PARAPHRASES[task])]
    return text.format(labels=", ".join(labels or (ABAW_AUS if task == "au" else ())))


def format_answer(task: str, value, labels: tuple[str, ...] | None = None) -> str:
    """The canonical answer text for a task (what the data builders write into targets)."""
    _check_task(task)
    if task == "expr":
        return str(value)
    if task == "au":
        return ", ".join(value) if value else "none"
    if task == "va":
        valence, arousal = value
        return f"valence={valence:.2f}, arousal={arousal:.2f}"
    return "present" if value else "absent"


def format_completion(task: str, think: str, value) -> str:
    return f"<think>{think}</think><answer>{format_answer(task, value)}</answer>"


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")


def parse(completion: str, task: str, labels: str | tuple[str, ...] = "abaw_expr") -> Parsed | ParseError:
    """Parse a completion for `task`; never raises on model output (only on an unknown task or label space)."""
    _check_task(task)
    names = label_space(labels) if isinstance(labels, str) else tuple(labels)

    def fail(code: str, message: str) -> ParseError:
        return ParseError(task=task, error=code, message=message)

    match = _COMPLETION.match(completion)
    if match is None:
        if "<think>" not in completion:
            return fail("missing_think", "no <think> block")
        if "</think>" not in completion:
            return fail("truncated", "the <think> block is not closed")
        if "<answer>" not in completion:
            return fail("missing_answer", "no <answer> block after </think>")
        if "</answer>" not in completion:
            return fail("truncated", "the <answer> block is not closed")
        return fail("trailing_text", "text outside <think>...</think><answer>...</answer>")
    think, answer = match.group("think"), match.group("answer")
    if _TAG.search(think) or _TAG.search(answer):
        return fail("nested_tags", "<think> or <answer> tags inside a block")
    if not think.strip():
        return fail("empty_think", "the <think> block is empty")
    answer = answer.strip()
    if not answer:
        return fail("empty_answer", "the <answer> block is empty")

    try:
        return Parsed(task, think.strip(), ANSWERS[task].read(answer, names))
    except _BadAnswer as bad:
        return fail(bad.code, bad.message)


# ---------------------------------------------------------------------------------------------------------------
# Each task's answer is defined once, here: how it is read (`read`) and the constraint regex of its canonical
# written form (`regex`), side by side, so the constrained decoder can only produce what the parser accepts
# (tests/mllm/test_output.py draws random strings from every regex and parses them). The parser is more lenient
# than the regex (case, spacing, any AU order), never stricter.


class _BadAnswer(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _read_expr(answer: str, names: tuple[str, ...]):
    canonical = {n.lower(): n for n in names}
    if answer.lower() not in canonical:
        raise _BadAnswer("unknown_label", f"{answer!r} is not one of {', '.join(names)}")
    return canonical[answer.lower()]


def _regex_expr(names: tuple[str, ...]) -> str:
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def _read_au(answer: str, names: tuple[str, ...]):
    if answer.lower() == "none":
        return ()
    aus = [a.strip().upper() for a in answer.split(",")]
    unknown = [a for a in aus if a not in ABAW_AUS]
    if unknown or not all(aus):
        raise _BadAnswer("unknown_label", f"{', '.join(unknown) or 'empty item'} not among {', '.join(ABAW_AUS)}")
    if len(set(aus)) != len(aus):
        raise _BadAnswer("bad_format", "an AU is listed twice")
    return tuple(sorted(aus, key=ABAW_AUS.index))


def _regex_au(names: tuple[str, ...]) -> str:
    # AUs in ABAW order, each at most once: one alternative per last AU, preceded by any earlier ones. 78 groups,
    # where a free repetition `AU(, AU)*` would let the decoder write a list the parser refuses.
    lists = ["".join(f"({a}, )?" for a in ABAW_AUS[:i]) + last for i, last in enumerate(ABAW_AUS)]
    return "(none|" + "|".join(f"({x})" for x in lists) + ")"


def _read_va(answer: str, names: tuple[str, ...]):
    va = _VA.match(answer)
    if va is None:
        raise _BadAnswer("bad_format", "expected 'valence=<number>, arousal=<number>'")
    valence, arousal = float(va.group("v")), float(va.group("a"))
    if not (-1 <= valence <= 1 and -1 <= arousal <= 1):
        raise _BadAnswer("out_of_range", f"valence {valence} and arousal {arousal} must lie in [-1, 1]")
    return (valence, arousal)


def _regex_va(names: tuple[str, ...]) -> str:
    number = r"-?(0(\.[0-9]{1,2})?|1(\.00?)?)"
    return f"valence={number}, arousal={number}"


def _read_ah(answer: str, names: tuple[str, ...]):
    if answer.lower() not in AH_ANSWERS:
        raise _BadAnswer("unknown_label", f"{answer!r} is not 'present' or 'absent'")
    return answer.lower() == "present"


def _regex_ah(names: tuple[str, ...]) -> str:
    return "(" + "|".join(AH_ANSWERS) + ")"


@dataclass(frozen=True)
class AnswerFormat:
    read: object  # (answer text, label names) -> typed value; raises _BadAnswer(code, message)
    regex: object  # (label names) -> regex of the canonical answer text


ANSWERS: dict[str, AnswerFormat] = {
    "expr": AnswerFormat(_read_expr, _regex_expr),
    "au": AnswerFormat(_read_au, _regex_au),
    "va": AnswerFormat(_read_va, _regex_va),
    "ah": AnswerFormat(_read_ah, _regex_ah),
}


def think_budget(task: str, labels: str | tuple[str, ...], max_tokens: int) -> int:
    """The most characters the think may take so that a completion of `max_tokens` tokens always has room for the
    closing tag and the longest answer of the task (each token is at least one character of ASCII text; a think in
    other scripts may take more tokens than characters and then run out before its answer, which is reported as
    unparsed, never forced). Raises ValueError when `max_tokens` leaves no room for any think."""
    _check_task(task)
    names = label_space(labels) if isinstance(labels, str) else tuple(labels)
    longest = {
        "expr": max(len(n) for n in names),
        "au": len(", ".join(ABAW_AUS)),
        "va": len("valence=-0.00, arousal=-0.00"),
        "ah": max(len(a) for a in AH_ANSWERS),
    }[task]
    reserve = len("</think><answer>") + longest + len("</answer>") + len("<think>")
    if max_tokens <= reserve:
        raise ValueError(f"a {task} answer needs max_tokens >= {reserve + 1} (got {max_tokens})")
    return max_tokens - reserve


def answer_regex(task: str, labels: str | tuple[str, ...] = "abaw_expr", max_think_chars: int | None = None) -> str:
    """A regular expression of whole valid completions, for constrained decoding (vLLM structured outputs).
    The think text may not contain '<', which keeps tags out of it; `max_think_chars` bounds its length so a
    generation budget always leaves room for the answer."""
    _check_task(task)
    names = label_space(labels) if isinstance(labels, str) else tuple(labels)
    answer = ANSWERS[task].regex(names)
    if max_think_chars is None:
        think = r"[^<]*[^<\s][^<]*"
    else:
        if max_think_chars < 1:
            raise ValueError(f"max_think_chars must be >= 1, got {max_think_chars}")
        half = (max_think_chars - 1) // 2
        think = rf"[^<]{{0,{half}}}[^<\s][^<]{{0,{half}}}"
    return rf"<think>{think}</think><answer>{answer}</answer>"
