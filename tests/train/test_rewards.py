"""GRPO rewards (train/rewards) and the per-sample scorers they share with evaluation (mllm/scoring.py)."""

from __future__ import annotations

import doctest
from itertools import combinations

import pytest

from mllm import scoring
from mllm.labels import ABAW_AUS, EMFACS, FACS_NAMES, LABEL_SPACES
from train.rewards import (
    DEFAULT_REWARDS,
    DEFAULT_WEIGHTS,
    REWARD_FACTORIES,
    REWARDS,
    default_weights,
    get_reward_funcs,
)

FORMAT, EXPRESSION, AU_F1, VA, CONSISTENCY, AH = (
    REWARDS[n] for n in ("format", "expression", "au_f1", "va", "consistency", "ah")
)


def done(think: str, answer: str) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


HAPPY = done("AU6 (cheek raiser) and AU12 (lip corner puller) are active: the happiness prototype.", "Happiness")
MALFORMED = {
    "missing tags": "Happiness",
    "missing think": "<answer>Happiness</answer>",
    "missing answer": "<think>AU6 and AU12.</think>",
    "truncated think": "<think>AU6 and AU12 are",
    "truncated answer": "<think>AU6 and AU12.</think><answer>Happ",
    "nested tags": "<think>AU6 <think>AU12</think><answer>Happiness</answer>",
    "answer inside think": "<think>AU6 <answer>Happiness</answer></think><answer>Happiness</answer>",
    "empty answer": "<think>AU6 and AU12.</think><answer>  </answer>",
    "empty think": "<think> </think><answer>Happiness</answer>",
    "trailing text": HAPPY + " Also sadness.",
    "unknown label": done("AU6 and AU12.", "Joy"),
}


def expr_columns(n: int, expression="Happiness", aus=("AU6", "AU12"), grounding="au", **extra) -> dict:
    return {
        "task": ["expr"] * n,
        "expression": [expression] * n,
        "aus": [list(aus)] * n,
        "target_grounding": [grounding] * n,
        **{k: [v] * n for k, v in extra.items()},
    }


def messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------------------------
# Scorers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AU6 and AU12", ("AU6", "AU12")),
        ("AU 6, au 12, Au06, AU012", ("AU6", "AU12")),
        ("AU12 then AU2 then AU10", ("AU2", "AU10", "AU12")),  # FACS number order, not text or string order
        ("AU12C (marked lip corner puller)", ("AU12",)),  # FACS intensity letters
        ("AU1-AU4 (brows)", ("AU1", "AU4")),
        ("AUX, TAU12, AU123, AU0, AU, AU 0", ()),
        ("cheek raiser and lip corner puller", ()),  # FACS names without a number do not count
    ],
)
def test_cited_aus_normalises_and_rejects(text, expected):
    assert scoring.cited_aus(text) == expected


def test_au_f1_is_binary_f1():
    assert scoring.au_f1(["AU6", "AU12"], ["AU12", "AU6"]) == 1.0
    assert scoring.au_f1([], []) == 1.0
    assert scoring.au_f1([], ["AU6"]) == 0.0
    assert scoring.au_f1(["AU6"], []) == 0.0
    assert scoring.au_f1(["AU6", "AU4"], ["AU6", "AU12"]) == pytest.approx(0.5)
    assert scoring.au_f1(ABAW_AUS, ["AU6", "AU12"]) == pytest.approx(2 * 2 / 14)


def test_expression_correct_and_va_closeness():
    assert scoring.expression_correct("Happiness", "happiness ")
    assert not scoring.expression_correct("Sadness", "Happiness")
    assert not scoring.expression_correct(None, "Happiness")
    assert not scoring.expression_correct("Happiness", "")
    assert scoring.va_closeness((0.3, -0.2), (0.3, -0.2)) == 1.0
    assert scoring.va_closeness((1.0, 1.0), (-1.0, -1.0)) == 0.0
    assert scoring.va_closeness((0.0, 0.0), (0.5, -0.5)) == pytest.approx(0.75)
    assert scoring.va_closeness((9.0, -9.0), (1.0, -1.0)) == 1.0  # clipped to [-1, 1]
    assert scoring.va_closeness((9.0, 9.0), (-1.0, -1.0)) == 0.0


@pytest.mark.parametrize(
    "label, aus, expected",
    [
        ("Happiness", ["AU6", "AU12"], True),
        ("Happiness", ["AU12"], True),
        ("Happiness", [], False),  # nothing cited supports it
        ("Happiness", ["AU1", "AU4", "AU15"], False),
        ("Sadness", ["AU1", "AU4", "AU15", "AU6"], True),
        ("Sadness", ["AU1", "AU6", "AU12"], False),  # Happiness shares strictly more
        ("Surprise", ["AU1", "AU2", "AU26"], True),  # Fear shares as many: a tie still supports
        ("Fear", ["AU1", "AU2", "AU26"], True),
        ("Neutral", [], True),
        ("Neutral", ["AU25"], True),  # not in any prototype
        ("Neutral", ["AU12", "AU25"], False),
        ("Other", ["AU6", "AU12"], None),
        ("Anxiety", [], None),
    ],
)
def test_supports_follows_emfacs(label, aus, expected):
    assert scoring.supports(label, aus) is expected


def test_supports_among_a_label_space_ignores_absent_prototypes():
    # Contempt (AU12, AU14) out-shares Happiness, but basic7 has no Contempt to compete.
    assert scoring.supports("Happiness", ["AU12", "AU14"]) is False
    assert scoring.supports("Happiness", ["AU12", "AU14"], among=LABEL_SPACES["basic7"]) is True
    assert scoring.supports("Contempt", ["AU12", "AU14"], among=LABEL_SPACES["affectnet8"]) is True


@pytest.mark.parametrize(
    "think, answer, named",
    [
        ("this looks like sadness", "Happiness", ("Sadness",)),
        ("A NEUTRAL face at first", "Happiness", ("Neutral",)),
        ("she seems sad, maybe afraid", "Happiness", ("Fear", "Sadness")),
        ("AU6 and AU12: happiness, a happy face", "Happiness", ()),  # its own label's words
        ("the other units are at rest", "Happiness", ()),  # "Other" is an everyday word, never looked for
        ("fearless, happily, saddle, angrier, surprises", "Neutral", ()),  # substrings are not words
        ("unhappy", "Happiness", ("Sadness",)),
        ("relaxed features: neutral", "Neutral", ()),
    ],
)
def test_other_labels_named_whole_words(think, answer, named):
    labels = LABEL_SPACES["abaw_expr"]
    assert set(scoring.other_labels_named(think, answer, labels)) == set(named)
    assert scoring.names_other_label(think, answer, labels) is bool(named)


def test_names_other_label_only_within_the_label_space():
    assert not scoring.names_other_label("contempt", "Happiness", LABEL_SPACES["abaw_expr"])
    assert scoring.names_other_label("contempt", "Happiness", LABEL_SPACES["affectnet8"])
    assert scoring.names_other_label("anxious", "Sadness", LABEL_SPACES["mafw11"])


# ---------------------------------------------------------------------------------------------------------------
# format, expression


def test_format_accepts_valid_and_message_lists():
    completions = [HAPPY, messages(HAPPY), done("AU6 and AU12.", "happiness"), "\n" + HAPPY + "\n"]
    assert FORMAT(completions, task=["expr"] * 4) == [1.0] * 4


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_completions_score_their_floor(case):
    completion = MALFORMED[case]
    columns = expr_columns(1)
    assert FORMAT([completion], **columns) == [0.0]
    assert EXPRESSION([completion], **columns) == [0.0]
    assert AU_F1([completion], **columns) == [-1.0]
    assert CONSISTENCY([completion], **columns) == [0.0]


def test_format_checks_the_rows_label_space():
    other = done("No prototype fits.", "Other")
    assert FORMAT([other, other], task=["expr"] * 2, label_space=["abaw_expr", "basic7"]) == [1.0, 0.0]
    assert FORMAT([done("x", "present")], task=["ah"]) == [1.0]
    assert FORMAT([done("x", "present")], task=["expr"]) == [0.0]


def test_expression_scores_the_answer_only():
    completions = [
        HAPPY,
        messages(HAPPY),
        done("AU6 and AU12.", "happiness"),  # parse canonicalises the case
        done("AU1, AU4 and AU15.", "Sadness"),
        "<think>this is happiness</think><answer></answer>",  # label only in the think
        done("this is happiness", "Joy"),
        "<think>Happiness</think>",
    ]
    assert EXPRESSION(completions, **expr_columns(len(completions))) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_expression_is_none_for_other_tasks_and_unknown_labels():
    columns = {"task": ["expr", "au", "va", "ah"], "expression": ["", "Happiness", "Happiness", "Happiness"]}
    assert EXPRESSION([HAPPY] * 4, **columns) == [None] * 4
    assert EXPRESSION([HAPPY], task=["expr"]) == [None]  # no expression column: unknown


# ---------------------------------------------------------------------------------------------------------------
# au_f1


def test_au_f1_rewards_the_labelled_aus_and_punishes_stuffing():
    stuffed = done(", ".join(ABAW_AUS) + " might all be active.", "Happiness")
    every_facs = done(" ".join(FACS_NAMES), "Happiness")
    exact = done("AU06 and au 12 are active.", "Happiness")
    half = done("AU12 is active.", "Happiness")
    none = done("The face is relaxed.", "Happiness")
    scores = AU_F1([exact, half, stuffed, every_facs, none], **expr_columns(5))
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(2 * (2 / 3) - 1)
    assert scores[2] < 0 and scores[3] < 0
    assert scores[2] < scores[1] < scores[0]
    assert scores[4] == -1.0


def test_au_f1_without_active_aus_and_without_annotation():
    quiet, cited = done("No unit is active.", "Neutral"), done("AU25 is active.", "Neutral")
    assert AU_F1([quiet, cited], **expr_columns(2, "Neutral", aus=())) == [1.0, -1.0]
    assert AU_F1([quiet, MALFORMED["missing tags"]], **expr_columns(2, grounding="labels")) == [None, None]
    assert AU_F1([quiet], task=["expr"]) == [None]  # no aus column: no annotation


def test_au_f1_counts_the_answer_of_the_au_task():
    columns = {"task": ["au"] * 3, "aus": [["AU6", "AU12"]] * 3, "target_grounding": ["au"] * 3}
    in_answer = done("The cheeks rise and the lip corners pull.", "AU6, AU12")
    split = done("AU6 (cheek raiser).", "AU12")
    answer_none = done("AU6 and AU12 look active.", "none")
    assert AU_F1([in_answer, split, answer_none], **columns) == [1.0, 1.0, 1.0]
    assert AU_F1([done("Nothing moves.", "none")], task=["au"], aus=[[]], target_grounding=["au"]) == [1.0]


def test_au_f1_scores_every_task_with_au_labels():
    va_done = done("AU6 and AU12.", "valence=0.60, arousal=0.20")
    assert AU_F1([va_done], task=["va"], aus=[["AU6", "AU12"]], target_grounding=["au"]) == [1.0]


# ---------------------------------------------------------------------------------------------------------------
# consistency


def test_consistency_needs_supporting_aus_and_no_other_label():
    completions = [
        HAPPY,
        messages(HAPPY),
        "<think>this is sadness</think><answer>Happiness</answer>",
        done("AU6 and AU12, though a neutral face at first.", "Happiness"),
        done("AU1, AU4 and AU15 are active.", "Happiness"),  # the cited units are Sadness's
        done("The face is relaxed.", "Happiness"),  # nothing supports the answer
        done("AU12 and AU25.", "Neutral"),  # a prototype's unit argues against a neutral face
        done("AU25 only: lips part.", "Neutral"),
        done("AU6 and AU12 but no basic emotion fits.", "Other"),  # no prototype: only the naming part
        done("AU6 and AU12, yet this is sadness.", "Other"),
    ]
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert CONSISTENCY(completions, **expr_columns(len(completions))) == expected


def test_consistency_where_labelled_aus_do_not_support_the_label_checks_naming_only():
    relaxed = done("No unit annotation; the context suggests happiness.", "Happiness")
    hidden = done("No unit annotation; sadness, maybe.", "Happiness")
    assert CONSISTENCY([relaxed, hidden], **expr_columns(2, grounding="labels")) == [1.0, 0.0]
    conflict = expr_columns(2, aus=("AU5", "AU23"), grounding="conflict")  # labelled Happiness, Anger's units
    honest = done("AU5 and AU23 are not the usual ones for happiness.", "Happiness")
    assert CONSISTENCY([honest, hidden], **conflict) == [1.0, 0.0]


def test_consistency_is_none_for_other_tasks():
    tasks = ["au", "va", "ah"]
    assert CONSISTENCY(["<think>sadness</think><answer>Happiness</answer>"] * 3, task=tasks) == [None] * 3


def test_reference_targets_earn_full_rewards():
    """The SFT targets (data_builders/cot.py) pass every reward on every label and AU combination: GRPO never
    pays the model to leave its reference reasoning."""
    from data_builders.cot import build_target

    combos = [list(c) for n in range(3) for c in combinations(sorted(FACS_NAMES), n)]
    combos += [list(p) for p in EMFACS.values()] + [["AU1", "AU6", "AU12"], ["AU12", "AU14"]]
    for space in ("abaw_expr", "basic7", "affectnet8", "mafw11"):
        completions, columns = [], {k: [] for k in ("task", "expression", "aus", "target_grounding", "label_space")}
        for label in LABEL_SPACES[space]:
            for aus in [None, *combos]:
                target, grounding = build_target(f"{space}/{label}/{aus}", "expr", label, aus)
                completions.append(target)
                for key, value in zip(columns, ("expr", label, aus or [], grounding, space), strict=True):
                    columns[key].append(value)
        n = len(completions)
        assert FORMAT(completions, **columns) == [1.0] * n
        assert EXPRESSION(completions, **columns) == [1.0] * n
        assert CONSISTENCY(completions, **columns) == [1.0] * n, space
        assert {s for s in AU_F1(completions, **columns)} == {1.0, None}


# ---------------------------------------------------------------------------------------------------------------
# va, ah


def test_va_scores_closeness():
    completions = [
        done("Mild pleasure.", "valence=0.50, arousal=-0.20"),
        done("Mild pleasure.", "Valence = -0.5 , arousal = 0.2"),
        done("Way out.", "valence=1.5, arousal=0.0"),  # out of range: unparseable
        done("x", "0.5, -0.2"),
        "<think>x</think>",
    ]
    columns = {"task": ["va"] * 5, "valence": [0.5] * 5, "arousal": [-0.2] * 5}
    assert VA(completions, **columns) == pytest.approx([1.0, 0.65, 0.0, 0.0, 0.0])


def test_va_is_none_where_unknown_or_another_task():
    completion = done("x", "valence=0.50, arousal=-0.20")
    columns = {"task": ["va", "va", "expr"], "valence": [-5.0, 0.5, 0.5], "arousal": [0.1, -5.0, 0.1]}
    assert VA([completion] * 3, **columns) == [None, None, None]
    assert VA([completion], task=["va"]) == [None]


def test_ah_scores_present_and_absent():
    present, absent = done("Hesitant pauses.", "present"), done("Steady voice.", "Absent")
    columns = {"task": ["ah"] * 6, "ah": [1, 0, 1, 0, -1, 1]}
    completions = [present, absent, absent, present, present, MALFORMED["nested tags"]]
    assert AH(completions, **columns) == [1.0, 1.0, 0.0, 0.0, None, 0.0]
    assert AH([present], task=["expr"], ah=[1]) == [None]


# ---------------------------------------------------------------------------------------------------------------
# length, registry, TRL's calling convention


def test_length_guard_ramp():
    (length,) = get_reward_funcs(["length"], {"length": {"max_chars": 100}})
    texts = ["x" * n for n in (0, 100, 101, 150, 175, 200, 201, 10_000)]
    assert length(texts) == pytest.approx([0.0, 0.0, -0.01, -0.5, -0.75, -1.0, -1.0, -1.0])
    assert length([messages("x" * 150)], task=["expr"]) == [-0.5]
    (default,) = get_reward_funcs(["length"])
    assert default(["x" * 1200, "x" * 1800]) == [0.0, -0.5]
    with pytest.raises(ValueError, match="max_chars"):
        get_reward_funcs(["length"], {"length": {"max_chars": 0}})


def test_registry_names_and_errors():
    assert set(DEFAULT_REWARDS) <= set(REWARDS) == set(DEFAULT_WEIGHTS)
    funcs = get_reward_funcs(list(REWARDS))
    assert [f.__name__ for f in funcs] == list(REWARDS)  # TRL logs rewards by these names
    assert default_weights(["length", "expression"]) == [DEFAULT_WEIGHTS["length"], DEFAULT_WEIGHTS["expression"]]
    with pytest.raises(ValueError, match="valid: .*'au_f1'.*'format'"):
        get_reward_funcs(["format", "accuracy"])
    with pytest.raises(ValueError, match="unknown parameters"):
        get_reward_funcs(["length"], {"length": {"max_tokens": 10}})
    with pytest.raises(ValueError, match="take no parameters"):
        get_reward_funcs(["format"], {"format": {"strict": True}})
    with pytest.raises(ValueError, match="unknown rewards"):
        get_reward_funcs(["format"], {"lenght": {"max_chars": 10}})
    assert len(get_reward_funcs(["format"], {"length": {"max_chars": 10}})) == 1  # known but unused: ignored
    assert set(REWARD_FACTORIES) == {"length"}


def test_rewards_accept_trl_extras_and_check_columns():
    extras = {"prompts": [[{"role": "user", "content": "?"}]], "completion_ids": [[1, 2]], "trainer_state": object()}
    for func in get_reward_funcs(list(REWARDS)):
        scores = func([HAPPY], **expr_columns(1), **extras)
        assert len(scores) == 1 and (scores[0] is None or isinstance(scores[0], float)), func.__name__
    with pytest.raises(ValueError, match="'task'"):
        FORMAT([HAPPY], expression=["Happiness"])
    with pytest.raises(ValueError, match="'expression' has 2 values for 1"):
        EXPRESSION([HAPPY], task=["expr"], expression=["Happiness", "Fear"])


def test_message_content_parts():
    parts = [
        {"role": "assistant", "content": [{"type": "text", "text": HAPPY[:20]}, {"type": "text", "text": HAPPY[20:]}]}
    ]
    assert EXPRESSION([parts], **expr_columns(1)) == [1.0]


@pytest.mark.parametrize(
    "module",
    [
        "mllm.scoring",
        "train.rewards",
        "train.rewards.answers",
        "train.rewards.reasoning",
        "train.rewards.length",
        "train.rewards.rows",
    ],
)
def test_docstring_examples(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
