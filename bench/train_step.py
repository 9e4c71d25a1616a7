"""Training-step benchmark: seconds, tokens per second and peak memory per optimiser step, for SFT (a plain PyTorch
loop beside our TRL `SFTTrainer` path, on the same batches) and for GRPO (generation beside the update), on the
tiny and the mid-size random configs.

    .venv/bin/python bench/train_step.py [--sizes tiny mid] [--steps 6] [--grpo-steps 3] [--completion-length 32]
                                         [--warmup 1] [--threads 2] [--configs sft-trainer sft-trainer-fp32 ...]

The default (tiny only) takes about 3 minutes on 2 cores; `--sizes tiny mid` adds tens of minutes there (a mid
SFT step under bf16 autocast takes about 90 s on an AVX2-only CPU).

Inputs cost what real ones cost: a RAF-DB tree of real face photographs (`write_rafdb_expression_tree`, 6 training
identities x 3 expressions) built with `emoreason data build rafdb`; the processor decodes each image and finds its
face and 68 landmarks in the collator, with the face cache off (every step pays detection, as the first epoch of a
real dataset does). Checkpoints are `make_tiny(size=...)` ("mid": widths of a ~0.5B language model, fewer layers).

Each configuration runs in a fresh subprocess (`--one`), because peak RSS is process-wide:

- `sft-plain`: the recipe's model made trainable exactly as `train.sft` does (LoRA on the language model, the new
  modules in full), `SFTCollator`, then `model(**batch).loss.backward()` and `torch.optim.AdamW` over the same
  parameter groups, in fp32, on the very batches (same row ids, same order) the trainer drew;
- `sft-trainer`: `train.sft.build_trainer` from `train/recipes/sft_tiny_cpu.yaml` as users run it (TRL's
  SFTTrainer with our collator, fused LM-head loss, entropy and token-accuracy metrics, gradient clipping, fused
  AdamW, logging). The recipe does not set `bf16`, so TRL's default (`bf16: true`) applies: bf16 autocast, on CPU
  too; `sft-trainer-fp32` is the same with `--bf16 false`, which separates the trainer's overhead from precision;
- `grpo`: `train.grpo.build_trainer` from `train/recipes/grpo_tiny_cpu.yaml` (fp32, as the recipe sets) on the raw
  random checkpoint, with `--max_completion_length` from `--completion-length` (the recipe's 160 makes a tiny step take
  ~20 s here). One step is the recipe's batch: 3 prompts x 8 completions; a random model rarely stops early, so most
  run to the limit. `_tokenize_prompts` (media) and `_generate_single_turn` (sampling) are timed inside the trainer;
  "update" is the rest of the step (rewards, reference log-probabilities, policy forward, loss, backward, optimiser);
- `grpo-vllm`: the same with `use_vllm: true` (train/rollouts.py): the completions are sampled by the vLLM engine
  in the trainer's process; its "generation" includes the adapter's sync every step (saved, converted, loaded), and
  the trainer then computes the old policy's log-probabilities for TRL's importance-sampling correction (in
  "update"); `grpo-vllm-no-is`: the same without that correction (`vllm_importance_sampling_correction: false`), so
  without that forward pass. The comparison: `--completion-length 128 --sizes tiny mid --configs grpo grpo-vllm
  grpo-vllm-no-is`.

Step time is measured from one step's end to the next, so it includes the collator's work for that step; the first
`--warmup` steps are dropped and the median of the rest is shown. Tokens are the batch's attention-mask sum (SFT)
or the completion tokens sampled (GRPO). "peak RSS" is the process's high-water mark while training (model loaded
before it); "+ train" is that peak minus the resident size just before the first step. Checkpoint saving, the
end-of-run sample completions and the final model export are left out: they are not part of a step. The machine
line names the CPU: timings from machines that share their cores with other work move by tens of per cent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SFT_RECIPE = REPO / "train" / "recipes" / "sft_tiny_cpu.yaml"
GRPO_RECIPE = REPO / "train" / "recipes" / "grpo_tiny_cpu.yaml"
# The trainer first: the loop replays its batches.
CONFIGS = ("sft-trainer", "sft-trainer-fp32", "sft-plain", "grpo", "grpo-vllm", "grpo-vllm-no-is")
RESULT = "TRAIN_STEP_RESULT "


# ---------------------------------------------------------------------------------------------------------------
# Measuring inside one subprocess


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the lifetime peak


def _start_memory_window() -> float:
    """Reset the peak-RSS mark (Linux `clear_refs` 5) and return the resident size now."""
    with contextlib.suppress(OSError):  # without it the peak covers the whole process, model loading included
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


class StepClock:
    """Seconds between consecutive step ends, plus named sub-timings accumulated in between."""

    def __init__(self):
        self.last = self.last_cpu = None
        self.steps: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds (all threads): moves less than wall time on a busy machine
        self.parts: dict[str, list[float]] = {}
        self.pending: dict[str, float] = {}

    def begin(self):
        self.last, self.last_cpu = time.perf_counter(), time.process_time()

    def add(self, name: str, value: float):
        self.pending[name] = self.pending.get(name, 0.0) + value

    def step_end(self):
        now, cpu = time.perf_counter(), time.process_time()
        self.steps.append(now - self.last)
        self.cpu.append(cpu - self.last_cpu)
        self.last, self.last_cpu = now, cpu
        for name in set(self.parts) | set(self.pending):
            self.parts.setdefault(name, [0.0] * (len(self.steps) - 1)).append(self.pending.get(name, 0.0))
        self.pending = {}

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_end()

        return Clock()


class TimedCollator:
    """Wraps a collator: seconds, attention-mask tokens and row ids of every batch it makes."""

    def __init__(self, collator, clock: StepClock):
        self.collator, self.clock = collator, clock
        self.tokens: list[int] = []
        self.ids: list[list[str]] = []

    def __call__(self, rows):
        start = time.perf_counter()
        batch = self.collator(rows)
        self.clock.add("collate", time.perf_counter() - start)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.ids.append([r["id"] for r in rows])
        return batch


def _params(model) -> dict:
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }


def _no_face_cache(processor):
    processor.face_cache = False  # every step finds faces, as a real dataset's first epoch does


def _drop_sample_completions(trainer):
    from train.progress import SampleCompletions

    for callback in list(trainer.callback_handler.callbacks):
        if isinstance(callback, SampleCompletions):
            trainer.remove_callback(callback)


def _recipe_argv(recipe: Path, model: Path, data: Path, out: Path, steps: int) -> list[str]:
    return ["--config", str(recipe), "--model", str(model), "--data", str(data), "--output_dir", str(out),
            "--max_steps", str(steps), "--report_to", "none", "--save_strategy", "no"]  # fmt: skip


def run_sft_trainer(model: Path, data: Path, out: Path, steps: int, extra: list[str]) -> dict:
    from train.config import SFTRecipe, parse_recipe
    from train.sft import build_trainer

    recipe = parse_recipe(SFTRecipe, _recipe_argv(SFT_RECIPE, model, data, out, steps) + extra)
    trainer, processor, _, _ = build_trainer(recipe)
    _no_face_cache(processor)
    _drop_sample_completions(trainer)
    clock = StepClock()
    collator = trainer.data_collator = TimedCollator(trainer.data_collator, clock)
    trainer.add_callback(clock.callback())
    before = _start_memory_window()
    trainer.train()
    return {
        "seconds": clock.steps,
        "cpu": clock.cpu,
        "collate": clock.parts.get("collate", []),
        "tokens": collator.tokens[: len(clock.steps)],
        "batches": collator.ids[: len(clock.steps)],
        "rss_before_mib": before,
        "peak_rss_mib": _status_mib("VmHWM"),
        "batch_size": recipe.per_device_train_batch_size,
        "bf16": recipe.bf16,
        **_params(trainer.model),
    }


def run_sft_plain(model: Path, data: Path, out: Path, steps: int, batches: list[list[str]] | None) -> dict:
    """What a user writes without a trainer: the same model, collator and parameter groups, a bare loop."""
    import torch

    from data_builders.read import load_split
    from train.config import SFTRecipe, parse_recipe
    from train.data import SFTCollator
    from train.model import load_model_and_processor, make_trainable, parameter_groups

    recipe = parse_recipe(SFTRecipe, _recipe_argv(SFT_RECIPE, model, data, out, steps))
    rows = load_split(recipe.data, recipe.train_split, recipe.tasks, recipe.max_train_samples, recipe.seed)
    model_, processor, _ = load_model_and_processor(recipe)
    trainable = make_trainable(model_, recipe, lora=recipe.lora_r > 0, new_modules=recipe.new_modules_lr != 0)
    _no_face_cache(processor)
    groups = parameter_groups(trainable, recipe.learning_rate, recipe.new_modules_lr, recipe.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    index = {row_id: i for i, row_id in enumerate(rows["id"])}
    if not batches:  # no trainer run to copy: consecutive rows
        size = recipe.per_device_train_batch_size
        batches = [[rows[(s * size + k) % len(rows)]["id"] for k in range(size)] for s in range(steps)]
    clock = StepClock()
    collator = TimedCollator(SFTCollator(processor, recipe.max_length), clock)
    trainable.train()
    before = _start_memory_window()
    clock.begin()
    for ids in batches[:steps]:
        batch = collator([rows[index[i]] for i in ids])
        loss = trainable(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_end()
    return {
        "seconds": clock.steps,
        "cpu": clock.cpu,
        "collate": clock.parts.get("collate", []),
        "tokens": collator.tokens,
        "rss_before_mib": before,
        "peak_rss_mib": _status_mib("VmHWM"),
        "batch_size": recipe.per_device_train_batch_size,
        "bf16": False,
        **_params(trainable),
    }


def run_grpo(model: Path, data: Path, out: Path, steps: int, completion_length: int, extra=()) -> dict:
    from train.config import GRPORecipe, parse_recipe
    from train.grpo import EmoReasonGRPOTrainer, build_trainer

    clock = StepClock()
    generated: list[int] = []

    def timed(name, method):
        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            result = method(self, *args, **kwargs)
            clock.add(name, time.perf_counter() - start)
            if name == "generate":
                generated.append(sum(len(c) for c in result[0]))
            return result

        return wrapper

    # Patched on the class inside this subprocess only: the trainer's own code runs, timed.
    EmoReasonGRPOTrainer._tokenize_prompts = timed("prompt media", EmoReasonGRPOTrainer._tokenize_prompts)
    EmoReasonGRPOTrainer._generate_single_turn = timed("generate", EmoReasonGRPOTrainer._generate_single_turn)
    from train.rollouts import VLLMRollouts

    VLLMRollouts.sync = timed("sync", VLLMRollouts.sync)
    argv = _recipe_argv(GRPO_RECIPE, model, data, out, steps) + ["--max_completion_length", str(completion_length)]
    recipe = parse_recipe(GRPORecipe, [*argv, *extra])
    trainer, processor, _, _ = build_trainer(recipe)
    _no_face_cache(trainer.media_processor)
    trainer.add_callback(clock.callback())
    before = _start_memory_window()
    trainer.train()
    return {
        "seconds": clock.steps,
        "cpu": clock.cpu,
        "prompt media": clock.parts.get("prompt media", []),
        "generate": clock.parts.get("generate", []),
        "sync": clock.parts.get("sync", []),
        "generated_tokens": generated[: len(clock.steps)],
        "rss_before_mib": before,
        "peak_rss_mib": _status_mib("VmHWM"),
        "num_generations": recipe.num_generations,
        "max_completion_length": recipe.max_completion_length,
        "bf16": recipe.bf16,
        "use_vllm": recipe.use_vllm,
        **_params(trainer.model),
    }


def run_one(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.workdir) / f"run-{args.size}-{args.one}"
    batches = json.loads(Path(args.batches).read_text()) if args.batches else None
    if args.one == "sft-trainer":
        result = run_sft_trainer(Path(args.model), Path(args.data), out, args.steps, [])
    elif args.one == "sft-trainer-fp32":
        result = run_sft_trainer(Path(args.model), Path(args.data), out, args.steps, ["--bf16", "false"])
    elif args.one == "sft-plain":
        result = run_sft_plain(Path(args.model), Path(args.data), out, args.steps, batches)
    elif args.one == "grpo":
        result = run_grpo(Path(args.model), Path(args.data), out, args.steps, args.completion_length)
    else:
        extra = ["--use_vllm", "true"]
        if args.one == "grpo-vllm-no-is":
            extra += ["--vllm_importance_sampling_correction", "false"]
        result = run_grpo(Path(args.model), Path(args.data), out, args.steps, args.completion_length, extra)
    print(RESULT + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The parent: data, checkpoints, one subprocess per configuration, the tables


def _subprocess(config: str, size: str, model: Path, data: Path, workdir: Path, steps: int, threads: int,
                batches: Path | None, completion_length: int) -> dict | str:  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "EMOREASON_CACHE": str(workdir / "face-cache")}  # fmt: skip
    argv = [sys.executable, __file__, "--one", config, "--size", size, "--model", str(model), "--data", str(data),
            "--workdir", str(workdir), "--steps", str(steps), "--threads", str(threads),
            "--completion-length", str(completion_length)]  # fmt: skip
    if batches is not None:
        argv += ["--batches", str(batches)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return f"exit {done.returncode}: " + "\n    ".join(tail)


def _median(values: list[float], warmup: int) -> float:
    kept = values[warmup:] or values
    return statistics.median(kept) if kept else float("nan")


def _rate(amounts: list[int], seconds: list[float], warmup: int) -> float:
    a, s = amounts[warmup:] or amounts, seconds[warmup:] or seconds
    return sum(a) / sum(s) if s and sum(s) > 0 else float("nan")


def _precision(r: dict) -> str:
    return "bf16 autocast" if r["bf16"] else "fp32"


def _memory(r: dict) -> tuple[str, str]:
    return f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f}"


SFT_ROWS = (
    ("sft-plain", "plain PyTorch loop"),
    ("sft-trainer-fp32", "TRL SFTTrainer (ours) --bf16 false"),
    ("sft-trainer", "TRL SFTTrainer (ours), recipe as is"),
)


def sft_table(results: dict, warmup: int) -> list[str]:
    lines = [
        "| size | path | precision | params (trainable) | s / step | cpu s / step | collate s | tokens / step "
        "| tokens / s | peak RSS MiB "
        "| + train MiB | vs plain |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, by_config in results.items():
        plain = by_config.get("sft-plain")
        for config, label in SFT_ROWS:
            if config not in by_config:
                continue
            r = by_config[config]
            if isinstance(r, str):
                lines.append(f"| {size} | {label} | failed: {(r or 'not run').splitlines()[0]} ||||||||")
                continue
            step = _median(r["seconds"], warmup)
            ratio = f"{step / _median(plain['seconds'], warmup):.2f}x" if isinstance(plain, dict) else "n/a"
            lines.append(
                f"| {size} | {label} | {_precision(r)} | {r['params_m']:.1f}M ({r['trainable_m']:.2f}M) | {step:.2f} "
                f"| {_median(r['cpu'], warmup):.2f} "
                f"| {_median(r['collate'], warmup):.2f} | {_median(r['tokens'], warmup):.0f} "
                f"| {_rate(r['tokens'], r['seconds'], warmup):.0f} | {' | '.join(_memory(r))} | {ratio} |"
            )
    return lines


GRPO_BACKENDS = {
    "grpo": "transformers generate",
    "grpo-vllm": "vLLM (use_vllm)",
    "grpo-vllm-no-is": "vLLM, no IS correction",
}


def grpo_table(results: dict, warmup: int) -> list[str]:
    lines = [
        "| size | generation | precision | s / step | cpu s / step | prompt media s | generation s (share) "
        "| of which adapter sync s | update s (share) | completion tokens / step | generated tokens / s "
        "| peak RSS MiB | + train MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for size, by_config in results.items():
        measured = {}
        for config, backend in GRPO_BACKENDS.items():
            if config not in by_config:
                continue
            r = by_config[config]
            if isinstance(r, str):
                lines.append(f"| {size} | {backend} | failed: {(r or 'not run').splitlines()[0]} |||||||||")
                continue
            step = _median(r["seconds"], warmup)
            media, generate = _median(r["prompt media"], warmup), _median(r["generate"], warmup)
            update = [s - m - g for s, m, g in zip(r["seconds"], r["prompt media"], r["generate"], strict=True)]
            rate = _rate(r["generated_tokens"], r["generate"], warmup)
            measured[config] = (step, generate, rate)
            sync = f"{_median(r['sync'], warmup):.2f}" if r.get("sync") else "-"
            lines.append(
                f"| {size} | {backend} | {_precision(r)} | {step:.2f} | {_median(r['cpu'], warmup):.2f} | {media:.2f} "
                f"| {generate:.2f} ({generate / step:.0%}) | {sync} "
                f"| {_median(update, warmup):.2f} ({_median(update, warmup) / step:.0%}) "
                f"| {_median(r['generated_tokens'], warmup):.0f} "
                f"| {rate:.0f} | {' | '.join(_memory(r))} |"
            )
        if "grpo" in measured:
            s0, g0, r0 = measured["grpo"]
            for config in ("grpo-vllm", "grpo-vllm-no-is"):
                if config in measured:
                    s1, g1, r1 = measured[config]
                    ratios.append(f"{size}, {GRPO_BACKENDS[config]}: step {s0 / s1:.2f}x as fast, generation "
                                  f"{g0 / g1:.2f}x ({r1:.0f} against {r0:.0f} tokens / s)")  # fmt: skip
    if ratios:
        lines += ["", "Against transformers `generate` (vLLM's generation includes the adapter's sync): "
                  + "; ".join(ratios) + "."]  # fmt: skip
    return lines


def machine(threads: int) -> str:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, {threads} torch threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, trl {trl.__version__}, Python {platform.python_version()}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "mid"])
    parser.add_argument("--steps", type=int, default=6, help="SFT optimiser steps per configuration")
    parser.add_argument("--grpo-steps", type=int, default=3, help="GRPO optimiser steps")
    parser.add_argument(
        "--completion-length", type=int, default=32, help="GRPO max_completion_length (the recipe's is 160)"
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, help="what to run")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # a subprocess: one configuration
    for hidden in ("--size", "--model", "--data", "--workdir", "--batches"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args)
    if min(args.steps, args.grpo_steps) <= args.warmup:
        parser.error("--steps and --grpo-steps must exceed --warmup")

    from mllm.cli import main as emoreason
    from mllm.samples.expression_photos import write_rafdb_expression_tree
    from mllm.samples.tiny import make_tiny

    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("data: RAF-DB tree of real faces (6 identities x 3 expressions), `data build rafdb` ...", flush=True)
        write_rafdb_expression_tree(tmp / "rafdb", tmp / "openface", train_faces=6, test_faces=1, seed=0)
        data = tmp / "data"
        build = ["data", "build", "rafdb", "--root", str(tmp / "rafdb"), "--openface", str(tmp / "openface")]
        if emoreason([*build, "--out", str(data)]) != 0:
            raise SystemExit("emoreason data build rafdb failed")
        for size in args.sizes:
            print(f"{size}: building random checkpoints ...", flush=True)
            model = make_tiny(tmp / size, size=size)
            results[size] = {}
            for config in (c for c in CONFIGS if c in args.configs):
                steps = args.grpo_steps if config.startswith("grpo") else args.steps
                batches = tmp / f"batches-{size}.json"
                print(f"{size}: {config}, {steps} steps ...", flush=True)
                result = _subprocess(config, size, model, data, tmp, steps, args.threads,
                                     batches if batches.exists() else None, args.completion_length)  # fmt: skip
                if config.startswith("sft-trainer") and isinstance(result, dict) and not batches.exists():
                    batches.write_text(json.dumps(result["batches"]))
                if isinstance(result, str):
                    print(f"  {config} failed, {result}", flush=True)
                results[size][config] = result
    print()
    print(f"### SFT: per optimiser step (median of steps {args.warmup + 1}-{args.steps}, batch 4)")
    print()
    print("\n".join(sft_table(results, args.warmup)))
    print()
    print(
        f"### GRPO: one step = 3 prompts x 8 completions of up to {args.completion_length} tokens, then the update "
        f"(median of steps {args.warmup + 1}-{args.grpo_steps})"
    )
    print()
    print("\n".join(grpo_table(results, args.warmup)))
    print()
    print(f"Machine: {machine(args.threads)}. Whole run {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
