"""Training configs: TRL's `SFTConfig` / `GRPOConfig` plus EmoReason's model, data, LoRA and reward options.

Typed defaults, then a YAML recipe (`--config train/recipes/sft_tiny_cpu.yaml`), then command-line overrides
(`--max_steps 5`, `--output_dir runs/x`), in that order, parsed by TRL's `TrlParser`. Every field of TRL's configs
(and of transformers' `TrainingArguments`) can be set either way; an unknown one is refused, naming it.

Every value is checked in `__post_init__` (type, finite, range, the packages and files it names: train/checks.py)
before anything loads; a bad one is one line, `FIELD: reason`, with `RECIPE:LINE:` first when the recipe file set
it (train/recipe_file.py reads the YAML with its lines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from trl import GRPOConfig, SFTConfig

from train.checks import RecipeError, check_fields, check_settings, check_trainer_settings


@dataclass
class EmoReasonOptions:
    """What EmoReason adds to TRL's configs (shared by both stages)."""

    model: str = field(
        default="",
        metadata={
            "help": "EmoReason checkpoint to start from: a folder (`emoreason make-tiny`, an earlier training "
            "output, or its `model/`) or an org/name hub id"
        },
    )
    data: str = field(default="", metadata={"help": "dataset folder written by `emoreason data build`"})
    train_split: str = field(default="train", metadata={"help": "split of --data to train on"})
    eval_split: str | None = field(default=None, metadata={"help": "split to evaluate on (none: no evaluation)"})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N samples of the split (after a seeded shuffle)"}
    )
    tasks: list[str] | None = field(default=None, metadata={"help": "train only on these tasks (expr, au, va, ah)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (on the language model only)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    new_modules_lr: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the modules trained in full (face attention, audio layer weights and "
            "projector, the base's vision projector); default: learning_rate. 0 freezes them"
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the last complete checkpoint in --output_dir"}
    )
    sample_every: int = field(
        default=0,
        metadata={"help": "every N steps, print and log a table of sample completions (0: only at the end)"},
    )
    vary_questions: bool = field(
        default=True,
        metadata={
            "help": "SFT: ask each sample its task's question in a wording drawn (seeded) from the task's "
            "paraphrases (mllm.output.PARAPHRASES) or the dataset's own, so the model understands questions asked "
            "in other words; false: always the dataset's wording"
        },
    )

    def check_emoreason_options(self) -> None:
        """What no single field's type and range can say (those are `train.checks`, run before TRL's checks)."""
        if not self.model:
            raise RecipeError("model", "no starting checkpoint given (--model DIR, or `model:` in the recipe)")
        if not self.data:
            raise RecipeError(
                "data", "no dataset given (--data DIR from `emoreason data build`, or `data:` in recipes)"
            )
        if not self.output_dir:
            raise RecipeError(
                "output_dir", "no output folder given (--output_dir DIR, or `output_dir:` in the recipe)"
            )
        if self.resume_from_checkpoint:
            raise RecipeError(
                "resume_from_checkpoint",
                "not used by emoreason; --resume continues from the last complete checkpoint in --output_dir",
            )
        from mllm.output import TASKS

        bad = [t for t in self.tasks or () if t not in TASKS]
        if bad:
            raise RecipeError("tasks", f"unknown {bad}; valid: {list(TASKS)}")


# Defaults that differ from TRL's, and why.
_COMMON_DEFAULTS = {
    # Our dataset columns feed the collator (SFT) and the rewards (GRPO): keep them.
    "remove_unused_columns": False,
    "report_to": ["tensorboard"],
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    # A batch without audio (or without images) leaves that branch without gradients: DDP must allow it.
    "ddp_find_unused_parameters": True,
}


@dataclass
class SFTRecipe(SFTConfig, EmoReasonOptions):
    """Stage 1 (and the optional stage 0): supervised fine-tuning on the dataset's targets."""

    stage: str = field(
        default="sft",
        metadata={
            "help": "sft: LoRA on the language model plus the new modules in full; align (stage 0): only the new "
            "modules (projector alignment), the language model frozen and no adapter"
        },
    )

    def __post_init__(self):
        check_fields(self)
        check_settings(self)
        self.check_emoreason_options()
        if self.stage not in ("sft", "align"):
            raise RecipeError("stage", f"must be 'sft' or 'align', got {self.stage!r}")
        if self.stage == "align" and self.new_modules_lr == 0:
            raise RecipeError("new_modules_lr", "stage align trains only the new modules: it cannot be 0")
        if self.stage == "sft" and self.lora_r == 0 and self.new_modules_lr == 0:
            raise RecipeError("new_modules_lr", "nothing to train: lora_r is 0 and new_modules_lr is 0")
        if self.packing or self.padding_free:
            raise RecipeError("packing", "packing / padding_free are not supported: media tokens are placed per chat")
        _library_post_init(super().__post_init__)
        check_trainer_settings(self)


@dataclass
class GRPORecipe(GRPOConfig, EmoReasonOptions):
    """Stage 2: GRPO from an SFT output, rewards computed from expression and action-unit labels."""

    rewards: list[str] = field(
        default_factory=lambda: list(_default_rewards()),
        metadata={"help": "reward functions by name (train/rewards); weights in reward_weights, same order"},
    )
    length_max_chars: int = field(default=1200, metadata={"help": "length guard: completions longer are penalised"})
    train_new_modules: bool = field(
        default=False,
        metadata={
            "help": "also update the new modules (off by default: the reference model is the policy with the "
            "adapter disabled, which is the SFT model only while the new modules stay as SFT left them)"
        },
    )
    vllm_sync_steps: int = field(
        default=1,
        metadata={"help": "use_vllm: load the policy's adapter into vLLM every N optimiser steps"},
    )
    vllm_kv_cache_gib: int = field(
        default=1,
        metadata={"help": "use_vllm on CPU: vLLM's KV cache in GiB (on GPU: vllm_gpu_memory_utilization)"},
    )
    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={"help": "use_vllm: no compiled graphs (default: on CPU, where compiling takes minutes; off on GPU)"},
    )

    def __post_init__(self):
        check_fields(self)
        check_settings(self)
        self.check_emoreason_options()
        if self.lora_r < 1:
            raise RecipeError("lora_r", f"GRPO trains a LoRA adapter: must be >= 1, got {self.lora_r}")
        if self.use_vllm:
            self.check_rollout_settings()
        if self.eval_split or self.eval_strategy != "no":
            raise RecipeError(
                "eval_split" if self.eval_split else "eval_strategy",
                "GRPO runs no evaluation while training; score the run with `emoreason eval run`",
            )
        if self.sync_ref_model:
            raise RecipeError(
                "sync_ref_model", "the reference is the policy with its adapter disabled: nothing to sync"
            )
        if self.router_aux_loss_coef:
            raise RecipeError("router_aux_loss_coef", "EmoReason's language models are not Mixture-of-Experts")
        from train.rewards import REWARDS

        if not self.rewards:
            raise RecipeError("rewards", f"at least one reward is needed; valid: {sorted(REWARDS)}")
        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown:
            raise RecipeError("rewards", f"unknown {unknown}; valid: {sorted(REWARDS)}")
        if self.reward_weights is None:
            from train.rewards import default_weights

            self.reward_weights = default_weights(self.rewards)
        if len(self.reward_weights) != len(self.rewards):
            raise RecipeError(
                "reward_weights",
                f"{len(self.reward_weights)} values for {len(self.rewards)} rewards {self.rewards}",
            )
        _library_post_init(super().__post_init__)
        check_trainer_settings(self)

    def check_rollout_settings(self) -> None:
        """`use_vllm: true` samples in a vLLM engine in each training process (train/rollouts.py)."""
        if self.vllm_mode != "colocate":
            raise RecipeError(
                "vllm_mode",
                f"only 'colocate' (a vLLM engine in each training process) can be fed EmoReason's embeddings; "
                f"got {self.vllm_mode!r} (TRL's vLLM server takes token ids and images only)",
            )
        world = int(os.environ.get("WORLD_SIZE") or 1)
        if self.vllm_tensor_parallel_size > 1 and world % self.vllm_tensor_parallel_size:
            raise RecipeError(
                "vllm_tensor_parallel_size",
                f"{self.vllm_tensor_parallel_size} processes share one rollout engine, split across them: launch "
                f"a multiple of that many (accelerate launch --num_processes); this run has {world}",
            )
        if self.vllm_enable_sleep_mode:
            raise RecipeError("vllm_enable_sleep_mode", "not supported by EmoReason's rollouts (set it false)")
        if self.vllm_sync_steps < 1:
            raise RecipeError("vllm_sync_steps", f"must be >= 1, got {self.vllm_sync_steps}")
        if self.vllm_kv_cache_gib < 1:
            raise RecipeError("vllm_kv_cache_gib", f"must be a whole number of GiB >= 1, got {self.vllm_kv_cache_gib}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise RecipeError(
                "vllm_gpu_memory_utilization", f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        paged = getattr(self, "use_transformers_paged", False)
        if paged or getattr(self, "use_transformers_continuous_batching", False):
            raise RecipeError("use_vllm", "choose one generation backend: use_vllm or transformers' paged generation")


def _library_post_init(post_init) -> None:
    """transformers' and TRL's own checks; a setting that needs a missing package is a user's error, not ours."""
    try:
        post_init()
    except ImportError as exc:
        raise ValueError(f"a setting needs a package that is not installed: {' '.join(str(exc).split())}") from None


def _default_rewards():
    from train.rewards import DEFAULT_REWARDS

    return DEFAULT_REWARDS


def parse_recipe(cls, argv: list[str]):
    """A recipe from `--config FILE` plus overrides, checked before anything loads. Every error is one line
    (ValueError or OSError): `FIELD: reason`, or `RECIPE:LINE: FIELD: reason` for a value the recipe file set."""
    from trl import TrlParser

    from train.checks import RecipeError
    from train.recipe_file import command_line_fields, read_recipe, take_config

    argv, path = take_config(list(argv))
    parser = TrlParser((cls,), allow_abbrev=False)  # `--lr` must not quietly mean `--lr_scheduler_type`
    parser.error = _raise_usage_error
    for action in parser._actions:
        if action.dest in _COMMON_DEFAULTS:
            action.default = _COMMON_DEFAULTS[action.dest]
    lines: dict[str, int] = {}
    if path is not None:
        values, lines = read_recipe(path)
        fields = {action.dest for action in parser._actions} - {"help"}
        unknown = [name for name in values if name not in fields and name != "env"]
        if unknown:
            raise ValueError(
                f"{path}:{lines[unknown[0]]}: unknown field {unknown[0]!r}{_did_you_mean(unknown[0], fields)}"
            )
        for name, value in values.pop("env", {}).items():  # TRL's recipes may set environment variables
            os.environ[str(name)] = str(value)
        parser.set_defaults_with_config(**values)
    from_command_line = command_line_fields(argv)

    def where(field: str) -> str:
        return f"{path}:{lines[field]}: " if field in lines and field not in from_command_line else ""

    try:
        namespace, remaining = parser.parse_known_args(argv)
    except _UsageError as exc:
        field = exc.field
        raise ValueError(f"{where(field)}{field}: {exc.reason}" if field else exc.reason) from None
    if remaining:
        option = next((r for r in remaining if r.startswith("-")), None)
        if option is None:
            raise ValueError(f"unexpected argument {remaining[0]!r} (the recipe is given with --config RECIPE.yaml)")
        name = option.lstrip("-").split("=", 1)[0]
        raise ValueError(f"{option}: unknown option{_did_you_mean(name, {a.dest for a in parser._actions})}")
    try:
        return cls(**vars(namespace))
    except RecipeError as exc:
        raise ValueError(f"{where(exc.field)}{exc}") from None


class _UsageError(ValueError):
    def __init__(self, message: str):
        import re

        match = re.match(r"argument (?:--)?([\w-]+)(?:/[^:]*)?: (.*)", message)
        self.field = match.group(1).replace("-", "_") if match else None
        self.reason = match.group(2) if match else message
        super().__init__(message)


def _raise_usage_error(message: str):
    """argparse's errors as one line (argparse would print the usage of every TRL field, then exit)."""
    raise _UsageError(message)


def _did_you_mean(name: str, fields) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
