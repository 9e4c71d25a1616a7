import re

import pytest

from mllm.output import answer_regex, format_completion, parse


@pytest.mark.parametrize(
    ("task", "answer", "expected"),
    [
        ("expr", "Happiness", "Happiness"),
        ("expr", " happiness ", "Happiness"),
        ("au", "AU12, AU6, au25", ("AU6", "AU12", "AU25")),
        ("au", "none", ()),
        ("va", "valence=0.25, arousal=-0.5", (0.25, -0.5)),
        ("ah", "present", True),
        ("ah", "Absent", False),
    ],
)
def test_valid(task, answer, expected):
    result = parse(f"<think>The lip corners rise.</think>\n<answer>{answer}</answer>", task)
    assert result.ok and result.answer == expected and result.think == "The lip corners rise."


@pytest.mark.parametrize(
    ("completion", "error"),
    [
        ("Happiness", "missing_think"),
        ("<think>cheeks raised", "truncated"),
        ("<think>cheeks raised</think>", "missing_answer"),
        ("<think>cheeks raised</think><answer>Happi", "truncated"),
        ("<think>a</think><answer>Happiness</answer> and more", "trailing_text"),
        ("<think>a <think>b</think></think><answer>Happiness</answer>", "nested_tags"),
        ("<think>a</think><answer><answer>Happiness</answer></answer>", "nested_tags"),
        ("<think>   </think><answer>Happiness</answer>", "empty_think"),
        ("<think>a</think><answer> </answer>", "empty_answer"),
        ("<think>a</think><answer>Joy</answer>", "unknown_label"),
        ("<think>a</think><answer>Happiness; Sadness</answer>", "unknown_label"),
        ("<think>a</think><answer>Contempt</answer>", "unknown_label"),  # not in ABAW's 8
    ],
)
def test_malformed_truncated_adversarial(completion, error):
    result = parse(completion, "expr")
    assert not result.ok and result.error == error and result.message


def test_task_specific_errors():
    assert parse("<think>a</think><answer>AU99</answer>", "au").error == "unknown_label"
    assert parse("<think>a</think><answer>AU6, AU6</answer>", "au").error == "bad_format"
    assert parse("<think>a</think><answer>valence=2, arousal=0</answer>", "va").error == "out_of_range"
    assert parse("<think>a</think><answer>positive</answer>", "va").error == "bad_format"
    assert parse("<think>a</think><answer>maybe</answer>", "ah").error == "unknown_label"
    assert parse("<think>a</think><answer>Contempt</answer>", "expr", "affectnet8").answer == "Contempt"
    with pytest.raises(ValueError, match="unknown task"):
        parse("x", "pose")
    with pytest.raises(ValueError, match="unknown label space"):
        parse("x", "expr", "nope")


@pytest.mark.parametrize(
    ("task", "value"),
    [("expr", "Sadness"), ("au", ("AU1", "AU4", "AU15")), ("au", ()), ("va", (-0.3, 0.75)), ("ah", True)],
)
def test_formatted_completions_parse_back_and_match_the_constraint_regex(task, value):
    completion = format_completion(task, "Brows drawn together, lip corners down.", value)
    assert parse(completion, task).answer == value
    assert re.fullmatch(answer_regex(task), completion)


def test_constraint_regex_rejects_what_the_parser_rejects():
    pattern = answer_regex("expr")
    for bad in [
        "<think>a</think><answer>Joy</answer>",
        "<think></think><answer>Anger</answer>",
        "<think>a<think></think><answer>Anger</answer>",
    ]:
        assert re.fullmatch(pattern, bad) is None


# Property: whatever the constrained decoder can write, the parser accepts, and reads back as the same value.
LABEL_SPACES_BY_TASK = [("expr", "abaw_expr"), ("expr", "mafw11"), ("au", "abaw_expr"), ("va", "abaw_expr")]
LABEL_SPACES_BY_TASK += [("ah", "abaw_expr")]


@pytest.mark.parametrize(("task", "labels"), LABEL_SPACES_BY_TASK)
@pytest.mark.parametrize("max_think_chars", [None, 40])
def test_every_string_the_constraint_allows_parses(task, labels, max_think_chars):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mllm.output import format_answer

    pattern = answer_regex(task, labels, max_think_chars=max_think_chars)

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(pattern, fullmatch=True))
    def check(completion):
        result = parse(completion, task, labels)
        assert result.ok, (completion, result)
        # The canonical form of what was read is itself allowed by the constraint (the definitions agree).
        canonical = re.search(r"<answer>(.*)</answer>", completion).group(1)
        if task != "va":  # va's canonical form rounds to 2 decimals, which the regex also allows
            assert format_answer(task, result.answer) == canonical

    check()


def test_au_constraint_forbids_repeats_and_allows_every_ordered_subset():
    import itertools

    from mllm.labels import ABAW_AUS

    pattern = re.compile(answer_regex("au"))
    wrap = "<think>x</think><answer>{}</answer>".format
    assert pattern.fullmatch(wrap("AU6, AU6")) is None
    assert pattern.fullmatch(wrap("AU12, AU6")) is None  # out of the canonical order
    assert pattern.fullmatch(wrap("AU1, AU1")) is None
    for n in (1, 2, 3, 12):
        for combo in itertools.combinations(ABAW_AUS, n):
            assert pattern.fullmatch(wrap(", ".join(combo))), combo
