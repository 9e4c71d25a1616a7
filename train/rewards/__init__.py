"""GRPO rewards, in one registry. Each is a TRL reward function `reward(completions, **columns) ->
list[float | None]`: pure, no I/O, scored by the per-sample scorers that evaluation uses too (`mllm.scoring`), on
completions parsed by the one parser (`mllm.output.parse`). None means "nothing to score here" (another task, an
unknown label); TRL leaves it out of the weighted sum. Columns come from the dataset (`task`, `expression`, `aus`,
`target_grounding`, `valence`, `arousal`, `ah`, `label_space`); extras such as `prompts` are ignored.

    >>> format_, length = get_reward_funcs(["format", "length"], {"length": {"max_chars": 40}})
    >>> done = "<think>AU6 and AU12.</think><answer>Happiness</answer>"
    >>> format_([done], task=["expr"]), length([done], task=["expr"]), length.__name__
    ([1.0], [-0.35], 'length')
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from train.rewards.answers import ah, expression, format, va
from train.rewards.length import length_guard
from train.rewards.reasoning import au_f1, consistency

# Rewards without parameters, and factories that build a parameterised reward (open-r1's style).
REWARD_FUNCTIONS: dict[str, Callable[..., list[float | None]]] = {
    "format": format,
    "expression": expression,
    "au_f1": au_f1,
    "va": va,
    "consistency": consistency,
    "ah": ah,
}
REWARD_FACTORIES: dict[str, Callable[..., Callable[..., list[float]]]] = {"length": length_guard}
REWARDS: dict[str, Callable] = {**REWARD_FUNCTIONS, **REWARD_FACTORIES}

# Every task's answer reward is listed: a reward returns None for the tasks it does not score.
DEFAULT_REWARDS: tuple[str, ...] = ("format", "expression", "au_f1", "va", "ah", "consistency", "length")
# For GRPOConfig.reward_weights, in the order of the names used. The answer counts most; the format and the
# reasoning shape it; the length guard is 0 unless a completion overruns.
DEFAULT_WEIGHTS: dict[str, float] = {
    "format": 0.5,
    "expression": 1.0,
    "au_f1": 0.5,
    "va": 1.0,
    "ah": 1.0,
    "consistency": 0.5,
    "length": 1.0,
}


def get_reward_funcs(names: list[str], params: dict[str, dict] | None = None) -> list[Callable]:
    """The reward functions for `names`, in order. `params` maps a factory's name to its keyword arguments
    (`{"length": {"max_chars": 800}}`); factories not given any are built with their defaults, and params of a
    known reward that is not in `names` are ignored. Unknown names raise ValueError listing the valid ones."""
    params = params or {}
    unknown = [name for name in [*names, *params] if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; valid: {sorted(REWARDS)}")
    not_parameterised = [name for name in params if name in REWARD_FUNCTIONS and params[name]]
    if not_parameterised:
        raise ValueError(f"rewards {not_parameterised} take no parameters; parameterised: {sorted(REWARD_FACTORIES)}")
    funcs = []
    for name in names:
        if name in REWARD_FUNCTIONS:
            funcs.append(REWARD_FUNCTIONS[name])
            continue
        factory = REWARD_FACTORIES[name]
        accepted = set(inspect.signature(factory).parameters)
        extra = sorted(set(params.get(name, {})) - accepted)
        if extra:
            raise ValueError(f"reward {name!r}: unknown parameters {extra}; valid: {sorted(accepted)}")
        funcs.append(factory(**params.get(name, {})))
    return funcs


def default_weights(names: list[str]) -> list[float]:
    """`DEFAULT_WEIGHTS` for `names`, in order (for GRPOConfig.reward_weights).

    >>> default_weights(["expression", "format"])
    [1.0, 0.5]
    """
    unknown = [name for name in names if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; valid: {sorted(REWARDS)}")
    return [DEFAULT_WEIGHTS[name] for name in names]


__all__ = [
    "DEFAULT_REWARDS",
    "DEFAULT_WEIGHTS",
    "REWARDS",
    "REWARD_FACTORIES",
    "REWARD_FUNCTIONS",
    "ah",
    "au_f1",
    "consistency",
    "default_weights",
    "expression",
    "format",
    "get_reward_funcs",
    "length_guard",
    "va",
]
