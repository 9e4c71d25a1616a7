"""`emoreason train sft|grpo|synthesize ...`: one subcommand per stage.

    emoreason train sft  --config train/recipes/sft_tiny_cpu.yaml --output_dir runs/sft
    emoreason train grpo --config train/recipes/grpo_tiny_cpu.yaml --model runs/sft --output_dir runs/grpo
    emoreason train synthesize --model runs/sft --data data/unlabelled --out data/synth

`sft` and `grpo` take a YAML recipe (`--config`) and any field of it, or of TRL's configs, as `--field value`
(command line over recipe over defaults). The same command runs under `accelerate launch` on several processes.
"""

from __future__ import annotations

import argparse

HELP = "Train: sft (LoRA supervised fine-tuning), grpo (reinforcement with label rewards), synthesize (stage 3 data)."
STAGES = ("sft", "grpo", "synthesize")


def add_arguments(parser) -> None:
    parser.add_argument("stage", choices=STAGES, help="which stage to run")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="--config RECIPE and --field value overrides")
    parser.epilog = "Options per stage: emoreason train STAGE --help"


def run(args) -> int:
    options = list(args.options)
    if "--verbose" in options:  # REMAINDER swallows it; it is ours, not the recipe's
        options.remove("--verbose")
        args.verbose = True
    if args.stage == "synthesize":
        from train import synthesize

        return synthesize.run_cli(options)
    from train.config import GRPORecipe, SFTRecipe, parse_recipe

    recipe = parse_recipe(SFTRecipe if args.stage == "sft" else GRPORecipe, options)
    if args.stage == "sft":
        from train import sft

        final = sft.main(recipe)
    else:
        from train import grpo

        final = grpo.main(recipe)
    if final is not None:
        print(f"final model: {final}  (emoreason analyze MEDIA --model {final})")
    return 0
