"""Training configs: TRL's `SFTConfig` / `GRPOConfig` plus EmoReason's model, data, LoRA and reward options.

Typed defaults, then a YAML recipe (`--config train/recipes/sft_tiny_cpu.yaml`), then command-line overrides
(`--max_steps 5`, `--output_dir runs/x`), in that order, parsed by TRL's `TrlParser`. Every field of TRL's configs
(and of transformers' `TrainingArguments`) can be set either way; an unknown one is refused, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig, SFTConfig


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

    def check_emoreason_options(self) -> None:
        if not self.model:
            raise ValueError("model: no starting checkpoint given (--model DIR, or `model:` in the recipe)")
        if not self.data:
            raise ValueError("data: no dataset given (--data DIR from `emoreason data build`, or `data:` in recipes)")
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(
                f"lora_r must be >= 0, lora_alpha > 0 and 0 <= lora_dropout < 1; got {self.lora_r}, "
                f"{self.lora_alpha}, {self.lora_dropout}"
            )
        if self.new_modules_lr is not None and self.new_modules_lr < 0:
            raise ValueError(f"new_modules_lr must be >= 0, got {self.new_modules_lr}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")
        from mllm.output import TASKS

        bad = [t for t in self.tasks or () if t not in TASKS]
        if bad:
            raise ValueError(f"tasks: unknown {bad}; valid: {list(TASKS)}")


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
        super().__post_init__()
        self.check_emoreason_options()
        if self.stage not in ("sft", "align"):
            raise ValueError(f"stage must be 'sft' or 'align', got {self.stage!r}")
        if self.stage == "align" and self.new_modules_lr == 0:
            raise ValueError("stage align trains only the new modules: new_modules_lr cannot be 0")
        if self.packing or self.padding_free:
            raise ValueError("packing / padding_free are not supported: media tokens are placed per conversation")


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

    def __post_init__(self):
        super().__post_init__()
        self.check_emoreason_options()
        if self.lora_r < 1:
            raise ValueError("GRPO trains a LoRA adapter: lora_r must be >= 1")
        from train.rewards import REWARDS

        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown:
            raise ValueError(f"rewards: unknown {unknown}; valid: {sorted(REWARDS)}")
        if self.reward_weights is None:
            from train.rewards import default_weights

            self.reward_weights = default_weights(self.rewards)
        if len(self.reward_weights) != len(self.rewards):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards {self.rewards}"
            )
        if self.length_max_chars < 1:
            raise ValueError(f"length_max_chars must be >= 1, got {self.length_max_chars}")


def _default_rewards():
    from train.rewards import DEFAULT_REWARDS

    return DEFAULT_REWARDS


def parse_recipe(cls, argv: list[str]):
    """A recipe from `--config FILE` plus overrides. Errors are one line (ValueError) naming the field."""
    import os

    from trl import TrlParser

    if "--config" in argv:
        path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path or '--config'}: recipe file not found")
    parser = TrlParser((cls,))
    for action in parser._actions:
        if action.dest in _COMMON_DEFAULTS:
            action.default = _COMMON_DEFAULTS[action.dest]
    try:
        (recipe,) = parser.parse_args_and_config(argv)
    except SystemExit as exc:  # argparse printed its message (usage or --help)
        if exc.code:
            raise ValueError("bad command-line arguments (see the message above)") from None
        raise
    return recipe
