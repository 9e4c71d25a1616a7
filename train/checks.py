"""Every field of a training recipe checked before anything loads: the right type, a finite number, in range.

    check_fields(recipe)   # in the recipes' __post_init__, before TRL's own checks see the values

A YAML recipe's values reach the dataclass as YAML typed them (TRL sets them as argparse defaults, which argparse
converts only when they are text), so `learning_rate: [1, 2]` or `max_steps: 5.0` arrive as they are; without these
checks they fail deep inside the trainer after the model has loaded, or not at all (`max_steps: -5` trained three
epochs). Each failure is a `RecipeError` whose text is `FIELD: reason`; `parse_recipe` adds the recipe's line.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

INT_LIMIT = 2**31 - 1  # beyond a C int, torch and the data loaders overflow


class RecipeError(ValueError):
    """A bad recipe field. `str()` is `FIELD: reason`; `field` names it, so the recipe's line can be added."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True)
class Bounds:
    """A closed or open interval; `None` leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) else f"{value:g}"


AT_LEAST_1 = Bounds(1)
NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
FRACTION = Bounds(0, 1)
BELOW_1 = Bounds(0, 1, high_open=True)
ABOVE_0 = Bounds(0, 1, low_open=True)

# Fields with a range (None, where the type allows it, is always accepted). Other numeric fields must be finite.
BOUNDS: dict[str, Bounds] = {
    # sizes and counts
    **dict.fromkeys(
        (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "eval_accumulation_steps",
            "torch_empty_cache_steps",
            "save_total_limit",
            "dataloader_prefetch_factor",
            "dataset_num_proc",
            "max_length",
            "max_train_samples",
            "lora_alpha",
            "length_max_chars",
            "num_generations_eval",
            "max_completion_length",
            "generation_batch_size",
            "steps_per_generation",
            "num_iterations",
            "ref_model_sync_steps",
            "vllm_tensor_parallel_size",
            "vllm_max_model_length",
            "max_tool_calling_iterations",
            "ddp_timeout",
            "ddp_bucket_cap_mb",
        ),
        AT_LEAST_1,
    ),
    "num_generations": Bounds(2),  # GRPO's advantages compare completions within a group
    **dict.fromkeys(
        ("lora_r", "sample_every", "dataloader_num_workers", "top_k", "num_completions_to_print"), NON_NEGATIVE
    ),
    **dict.fromkeys(("seed", "data_seed"), Bounds(0, 2**32 - 1)),  # numpy's seed range
    **dict.fromkeys(("vllm_server_port", "vllm_group_port"), Bounds(1, 65535)),
    "local_rank": Bounds(-1),
    # rates, schedules, intervals
    **dict.fromkeys(
        (
            "learning_rate",
            "new_modules_lr",
            "weight_decay",
            "adam_epsilon",
            "max_grad_norm",
            "num_train_epochs",
            "warmup_steps",
            "eval_delay",
            "neftune_noise_alpha",
            "router_aux_loss_coef",
            "beta",
            "epsilon",
            "epsilon_high",
            "entropy_coef",
            "entropy_coef_min",
            "entropy_coef_max",
            "entropy_coef_delta",
            "vespo_k_pos",
            "vespo_lambda_pos",
            "vespo_k_neg",
            "vespo_lambda_neg",
        ),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(
        (
            "logging_steps",
            "save_steps",
            "eval_steps",
            "temperature",
            "repetition_penalty",
            "delta",
            "sapo_temperature_neg",
            "sapo_temperature_pos",
            "vllm_server_timeout",
            "vllm_importance_sampling_clip_max",
            "vllm_importance_sampling_clip_min",
            "vllm_importance_sampling_cap",
            "off_policy_mask_threshold",
        ),
        POSITIVE,
    ),
    **dict.fromkeys(("adam_beta1", "adam_beta2", "label_smoothing_factor", "lora_dropout"), BELOW_1),
    **dict.fromkeys(("min_p", "ref_model_mixup_alpha", "top_entropy_quantile", "entropy_target"), FRACTION),
    **dict.fromkeys(("top_p", "vllm_gpu_memory_utilization"), ABOVE_0),
}
BOUNDS["pad_to_multiple_of"] = AT_LEAST_1
# Fields whose value must be one of these (TRL checks them only once training runs, or not at all).
CHOICES: dict[str, tuple] = {
    "loss_type": ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "nll", "dft", "chunked_nll"),
    "importance_sampling_level": ("token", "sequence"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "scale_rewards": ("group", "batch", "none", True, False),
}
HINT_OVERRIDES = {"scale_rewards": str | bool}  # TRL still reads true/false as group/none
# Optional in TRL's types, but None breaks GRPO's batch arithmetic and generation.
NOT_NULL = ("num_generations", "max_completion_length")
# Counted in steps when >= 1, a fraction of the run's steps below 1 (transformers' rule): 2.5 steps means nothing.
STEP_INTERVALS = ("logging_steps", "save_steps", "eval_steps")


def _show(value) -> str:
    """A short repr that never walks a huge or deeply nested value (a YAML alias bomb) in full."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 40, 40
    return short.repr(value)


@cache
def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def check_fields(recipe) -> None:
    """Each field's value against its declared type, finite where it is a number, inside `BOUNDS`; then the
    step counts (`max_steps`, `num_train_epochs`). Raises `RecipeError` naming the first bad field."""
    hints = _hints(type(recipe))
    for f in dataclasses.fields(recipe):
        if not f.init or f.name not in hints:
            continue
        value = getattr(recipe, f.name)
        if value is None and f.name in NOT_NULL:
            raise RecipeError(f.name, "must be set (a whole number), not null")
        check_value(f.name, value, HINT_OVERRIDES.get(f.name, hints[f.name]))
        choices = CHOICES.get(f.name, f.metadata.get("choices"))
        if choices is not None and value is not None and value not in list(choices):
            raise RecipeError(f.name, f"{value!r} is not one of {', '.join(map(str, choices))}")
    check_steps(recipe.max_steps, recipe.num_train_epochs)


def check_value(name: str, value, hint) -> None:
    if not _matches(value, hint):
        choices = _enum_values(hint)
        if choices and isinstance(value, str):
            raise RecipeError(name, f"{value!r} is not one of {', '.join(choices)}")
        raise RecipeError(name, f"must be {_describe(hint)}, got {_show(value)}")
    for number in value if isinstance(value, list | tuple) else [value]:
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue
        if isinstance(number, float) and not math.isfinite(number):
            raise RecipeError(name, f"must be a finite number, got {number}")
        if isinstance(number, int) and abs(number) > INT_LIMIT:
            raise RecipeError(name, f"must be at most {INT_LIMIT} in size, got {number}")
        bounds = BOUNDS.get(name)
        if bounds is not None and not bounds.holds(number):
            raise RecipeError(name, f"must be {bounds}, got {_number(number)}")
        if name in STEP_INTERVALS and number > 1 and number != int(number):
            raise RecipeError(name, f"must be a whole number of steps, or a fraction of the run below 1; got {number}")


def check_steps(max_steps: int, num_train_epochs: float) -> None:
    """`max_steps` > 0 is the run's length; -1 (TRL's default) means `num_train_epochs` passes over the data, and
    any other value would silently train for the epochs (-5 trained three of them)."""
    if max_steps == 0 or max_steps < -1:
        raise RecipeError(
            "max_steps", f"must be >= 1, or -1 to train for num_train_epochs ({num_train_epochs:g}); got {max_steps}"
        )
    if max_steps == -1 and num_train_epochs <= 0:
        raise RecipeError("num_train_epochs", f"must be > 0 when max_steps is -1 (not set); got {num_train_epochs:g}")


def _arms(hint) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _enum_values(hint) -> list[str]:
    return [str(e.value) for arm in _arms(hint) if isinstance(arm, type) and issubclass(arm, enum.Enum) for e in arm]


def _matches(value, hint) -> bool:
    arms = _arms(hint)
    if value is None and any(typing.get_origin(arm) is list for arm in arms):
        return True  # transformers' parser leaves an unset list field (`debug`) None; its __post_init__ expects it
    # `SchedulerType | str`: the text must name one of the enum's members (transformers converts it afterwards).
    choices = _enum_values(hint)
    if choices and isinstance(value, str):
        return value in choices
    return any(_matches_one(value, arm) for arm in arms)


def _matches_one(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin is typing.Literal:
        return any(value is a or (type(value) is type(a) and value == a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type this check does not know: the library's own checks apply


def _describe(hint) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping"}
    words = []
    for arm in _arms(hint):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if arm is type(None):
            words.append("null")
        elif origin in (list, tuple):
            plural = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "text values"}
            words.append(f"a list of {plural.get(args[0], 'values') if args else 'values'}")
        elif origin is dict:
            words.append("a mapping")
        elif origin is typing.Literal:
            words.append(" or ".join(repr(a) for a in args))
        elif isinstance(arm, type) and issubclass(arm, enum.Enum):
            words.append(f"one of {', '.join(str(e.value) for e in arm)}")
        else:
            words.append(names.get(arm, getattr(arm, "__name__", str(arm))))
    return " or ".join(dict.fromkeys(words))


# ---------------------------------------------------------------------------------------------------------------
# Settings that name packages, files and integrations: refused here, not after the model has loaded


FILE_FIELDS = ("deepspeed", "accelerator_config", "fsdp_config")  # text that is not JSON names a file


def check_settings(recipe) -> None:
    """Before transformers' and TRL's own checks (which would fail without naming the field, or not until the
    trainer is built): JSON in mapping fields, files the recipe names, packages it needs, report_to integrations,
    what emoreason's loader and run folder do not support."""
    import importlib.util
    import json
    import os

    hints = _hints(type(recipe))
    for name, hint in hints.items():
        value = getattr(recipe, name, None)
        if not isinstance(value, str) or dict not in {typing.get_origin(a) or a for a in _arms(hint)}:
            continue
        if value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise RecipeError(name, f"not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise RecipeError(name, "must be a mapping")
        elif name in FILE_FIELDS:
            if not os.path.isfile(os.path.expanduser(value)):
                raise RecipeError(name, f"{value}: file not found")
        elif value:
            raise RecipeError(name, f"must be a mapping (or its JSON text), got {_show(value)}")
    _check_accelerator_config(recipe.accelerator_config)
    pad = recipe.pad_to_multiple_of  # the command line gives text, which TRL turns into a number afterwards
    if isinstance(pad, str) and pad.lower() not in ("auto", "none", "null"):
        try:
            number = int(pad)
        except ValueError:
            raise RecipeError("pad_to_multiple_of", f"must be a whole number, auto or none; got {pad!r}") from None
        check_value("pad_to_multiple_of", number, int)
    if recipe.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise RecipeError("deepspeed", "needs the deepspeed package, which is not installed (pip install deepspeed)")
    if recipe.push_to_hub:
        raise RecipeError("push_to_hub", "not supported: upload OUTPUT_DIR/model yourself (`hf upload`)")
    _check_report_to(recipe.report_to)
    kwargs = recipe.model_init_kwargs
    if isinstance(kwargs, str) and kwargs.strip():
        kwargs = json.loads(kwargs)
    if kwargs:
        extra = sorted(set(kwargs) - {"dtype"})
        if extra:
            raise RecipeError("model_init_kwargs", f"only dtype is used by emoreason's loader, not {extra}")
        _check_dtype(kwargs["dtype"])
    if recipe.torch_compile_backend is not None:
        from accelerate.utils import DynamoBackend

        names = [b.value.lower() for b in DynamoBackend]
        if recipe.torch_compile_backend.lower() not in names:
            raise RecipeError("torch_compile_backend", f"{recipe.torch_compile_backend!r} is not one of {names}")


def check_trainer_settings(recipe) -> None:
    """After transformers' own checks: what the trainer would refuse only once built, with the model loaded."""
    from transformers import Trainer
    from transformers.training_args import ParallelMode

    if recipe.eval_strategy != "no" and not recipe.eval_split:
        raise RecipeError("eval_strategy", f"{recipe.eval_strategy.value!r} needs eval_split (the split to evaluate)")
    if recipe.fsdp and recipe.parallel_mode != ParallelMode.DISTRIBUTED:
        raise RecipeError("fsdp", "needs a distributed launch (accelerate launch or torchrun)")
    try:
        Trainer.get_optimizer_cls_and_kwargs(recipe)
    except ImportError as exc:
        raise RecipeError("optim", f"{recipe.optim.value}: {' '.join(str(exc).split())}") from None
    except (ValueError, TypeError, AttributeError):
        pass  # optimizers that need the model to be configured; the trainer checks them


def _check_report_to(report_to) -> None:
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if names in (["all"], ["none"]):
        return
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError("report_to", f"{name!r} is not one of all, none, {', '.join(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise RecipeError("report_to", f"{name}: its package is not installed")


def _check_dtype(dtype) -> None:
    import torch

    if dtype != "auto" and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise RecipeError("model_init_kwargs", f"dtype {dtype!r} is not 'auto' or a torch dtype (bfloat16, float32)")


def _check_accelerator_config(value) -> None:
    """Its keys (inline, as JSON text, or in the file it names) are AcceleratorConfig's: transformers would fail
    on an unknown one with a TypeError."""
    import json
    import os

    from transformers.trainer_pt_utils import AcceleratorConfig

    if isinstance(value, str) and value.strip():
        try:
            is_json = value.lstrip().startswith("{")
            text = value if is_json else Path(os.path.expanduser(value)).read_text(encoding="utf-8")
            value = json.loads(text)
        except (OSError, ValueError) as exc:
            raise RecipeError("accelerator_config", f"not a JSON mapping ({exc})") from None
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(AcceleratorConfig)}
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            raise RecipeError("accelerator_config", f"unknown keys {unknown}; valid: {sorted(known)}")
    elif value is not None and not isinstance(value, str | AcceleratorConfig):
        raise RecipeError("accelerator_config", f"must be a mapping, got {_show(value)}")
