"""Stage 3, self-improvement data: `emoreason train synthesize` (the Facial-R1 loop).

    emoreason train synthesize --model runs/grpo --data data/rafdb --out data/rafdb_synth
    emoreason train sft --config train/recipes/sft_tiny_cpu.yaml --model runs/grpo --data data/rafdb_synth ...

For every sample of a split written by `emoreason data build`, the model samples several completions; each is scored
by the GRPO rewards (`train.rewards`), and the best one (by the rewards' weighted total) that passes every threshold
becomes the sample's new `target`. Every other column is kept, and `meta` records where the target came from and its
rewards. A reward that does not apply to a sample (None: another task, an unknown label, no AU annotation) passes,
so unlabelled clips are kept on format and consistency alone, and weakly labelled ones (OpenFace AUs, already in
`aus`) are judged against those. Kept targets must parse (the `format` threshold is fixed at 1): they are SFT
targets. `--constrained` samples inside the answer grammar, as the serving path does, so every completion parses and
the rewards judge only its content.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from train.rewards import DEFAULT_REWARDS, DEFAULT_WEIGHTS

# A kept completion must reach each of these (None, "does not apply", always passes). `length` has no threshold by
# default: it only lowers the total of a completion that overruns.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "format": 1.0,
    "expression": 1.0,
    "au_f1": 0.5,
    "consistency": 1.0,
    "va": 0.8,
    "ah": 1.0,
}
# The dataset columns the rewards read (train/rewards/rows.py).
REWARD_COLUMNS = ("task", "expression", "aus", "target_grounding", "valence", "arousal", "ah", "label_space")
JSON_COLUMNS = ("prompt", "au_intensity", "cues", "meta")

# rows -> for each row, its sampled completions (the model's generation step; tests replace it).
Generate = Callable[[list[dict]], list[list[str]]]


@dataclass(frozen=True)
class Scored:
    completion: str
    rewards: dict[str, float | None]
    total: float
    passed: bool


def parse_thresholds(items: list[str] | None) -> dict[str, float]:
    """`DEFAULT_THRESHOLDS` with `NAME=VALUE` overrides (`-inf` turns a check off).

    >>> parse_thresholds(["au_f1=0.2", "length=0"])["au_f1"], parse_thresholds(["va=-inf"])["va"]
    (0.2, -inf)
    """
    thresholds = dict(DEFAULT_THRESHOLDS)
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_REWARDS:
            raise ValueError(
                f"--min-reward {item!r}: expected NAME=VALUE with NAME one of {', '.join(DEFAULT_REWARDS)}"
            )
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise ValueError(f"--min-reward {item!r}: {value!r} is not a number") from None
        if math.isnan(thresholds[name]):
            raise ValueError(f"--min-reward {item!r}: not a number")
    if thresholds["format"] != 1.0:
        raise ValueError(
            "--min-reward format: fixed at 1 (kept completions become SFT targets, which must parse; "
            "--constrained makes every completion parse)"
        )
    return thresholds


def score(completions: list[str], row: dict, thresholds: dict[str, float], reward_funcs=None) -> list[Scored]:
    """Every completion of one sample scored by the rewards of `DEFAULT_REWARDS`, with its weighted total and whether
    it passes `thresholds`."""
    from train.rewards import get_reward_funcs

    reward_funcs = reward_funcs or get_reward_funcs(list(DEFAULT_REWARDS))
    columns = {name: [row[name]] * len(completions) for name in REWARD_COLUMNS}
    by_name = {name: func(completions, **columns) for name, func in zip(DEFAULT_REWARDS, reward_funcs, strict=True)}
    scored = []
    for i, completion in enumerate(completions):
        rewards = {name: values[i] for name, values in by_name.items()}
        total = sum(DEFAULT_WEIGHTS[name] * value for name, value in rewards.items() if value is not None)
        passed = all(value is None or value >= thresholds.get(name, -math.inf) for name, value in rewards.items())
        scored.append(Scored(completion, rewards, total, passed))
    return scored


def best(scored: list[Scored]) -> Scored | None:
    """The passing completion with the highest total (the first of equals), or None."""
    passing = [s for s in scored if s.passed]
    return max(passing, key=lambda s: s.total) if passing else None


def model_generator(
    model_dir,
    num_generations: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    constrained: bool = False,
) -> Generate:
    """The real generation step: the checkpoint (its trained adapter merged) samples `num_generations` completions
    per row with transformers' generate, on the GPU where there is one."""
    import torch

    from data_builders.read import conversation
    from mllm.export import load_model
    from mllm.parts import ProcessorInputError
    from mllm.processor import EmoReasonProcessor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_dir).eval().to(device)
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    grammar = _grammar_builder(model, processor, max_new_tokens) if constrained else None

    @torch.no_grad()
    def generate(rows: list[dict]) -> list[list[str]]:
        try:
            batch = processor([conversation(row, with_target=False) for row in rows])
        except (ProcessorInputError, OSError, ValueError) as exc:
            ids = ", ".join(repr(row["id"]) for row in rows)
            raise ValueError(f"samples {ids}: {exc}") from exc
        extra = {}
        if grammar is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # One grammar per generated sequence; generate repeats each row num_generations times, in order.
            extra["logits_processor"] = [
                LogitsProcessor([grammar(row) for row in rows for _ in range(num_generations)])
            ]
        tokens = model.generate(
            **{k: v.to(device) for k, v in batch.items()},
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            num_return_sequences=num_generations,
            **extra,
        )
        texts = [processor.decode(t) for t in tokens]
        return [texts[i * num_generations : (i + 1) * num_generations] for i in range(len(rows))]

    return generate


def _grammar_builder(model, processor, max_new_tokens: int) -> Callable[[dict], object]:
    """row -> the compiled answer grammar of its task and label space (`mllm.output.answer_regex`, as in serving)."""
    try:
        import xgrammar as xgr
    except ImportError:
        raise ValueError("--constrained needs xgrammar (installed with vLLM): pip install xgrammar") from None
    from mllm.output import answer_regex, think_budget

    eos = model.config.eos_token_id
    vocab_size = model.get_output_embeddings().weight.shape[0]
    info = xgr.TokenizerInfo.from_huggingface(
        processor.tokenizer, vocab_size=vocab_size, stop_token_ids=eos if isinstance(eos, list) else [eos]
    )
    compiler = xgr.GrammarCompiler(info)
    compiled: dict[tuple[str, str], object] = {}

    def grammar(row: dict):
        key = (row["task"], row["label_space"])
        if key not in compiled:
            budget = think_budget(row["task"], row["label_space"], max_new_tokens)
            regex = answer_regex(row["task"], row["label_space"], max_think_chars=budget)
            compiled[key] = compiler.compile_regex(regex)
        return compiled[key]

    return grammar


def synthesize(
    model_dir,
    data_dir,
    out,
    split: str = "train",
    tasks: list[str] | None = None,
    num_generations: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    thresholds: dict[str, float] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    constrained: bool = False,
    out_split: str = "train",
    generate: Generate | None = None,
) -> dict:
    """Write the kept completions of `split` as a dataset at `out` (split `out_split`); returns the `synthesis`
    section of its build_report.json. `generate` replaces the model's generation step (then the model folder is
    checked, not loaded). Raises ValueError, and writes nothing, when no sample is kept."""
    from data_builders.cli import REPORT_FILE, _Claim
    from data_builders.read import load_split
    from mllm.checkpoints import check_checkpoint, resolve_checkpoint

    if num_generations < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("--num-generations, --batch-size and --max-new-tokens must be >= 1")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {max_samples}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"--temperature must be a finite number > 0 (sampling), got {temperature}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be in [0, {2**32 - 1}], got {seed}")
    thresholds = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: --data folder not found (write one with `emoreason data build`)")
    rows = load_split(data_dir, split, tasks=tasks, max_samples=max_samples, seed=seed)
    model_dir = resolve_checkpoint(model_dir)
    check_checkpoint(model_dir, processor=True)
    report = json.loads((data_dir / REPORT_FILE).read_text(encoding="utf-8"))
    protect = [p for p in (model_dir, data_dir) if isinstance(p, Path)]  # a hub id is not on disk
    claim = _Claim(str(out), protect)
    with claim:
        if generate is None:
            import torch

            torch.manual_seed(seed)
            generate = model_generator(model_dir, num_generations, temperature, max_new_tokens, constrained)
        kept, counts = _generate_and_keep(rows, generate, thresholds, batch_size)
        if not kept:
            raise ValueError(
                f"no sample kept: none of the {counts['generated']} completions for {len(rows)} samples of "
                f"{data_dir} [{split}] passed the thresholds ({_thresholds_text(thresholds)}); nothing written"
            )
        synthesis = {
            "model": _absolute(model_dir),
            "data": _absolute(data_dir),
            "split": split,
            "out_split": out_split,
            "thresholds": {name: value if value > -math.inf else None for name, value in thresholds.items()},
            "num_generations": num_generations,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "constrained": constrained,
            "seed": seed,
            "kept": len(kept),
            "samples": len(rows),
            "per_task": counts["per_task"],
        }
        samples = _samples(data_dir, split, kept, out_split, synthesis["model"])
        report = {**report, "samples": dict(Counter(f"{out_split}/{s.task}" for s in samples)), "synthesis": synthesis}
        from data_builders.schema import write_dataset

        write_dataset(samples, claim.out, files={REPORT_FILE: json.dumps(report, indent=1) + "\n"}, protect=protect)
    return synthesis


def _generate_and_keep(rows, generate: Generate, thresholds: dict[str, float], batch_size: int):
    from tqdm import tqdm

    from train.rewards import get_reward_funcs

    reward_funcs = get_reward_funcs(list(DEFAULT_REWARDS))
    kept: dict[str, Scored] = {}
    per_task: dict[str, dict[str, int]] = {}
    generated = 0
    with tqdm(total=len(rows), desc="synthesizing", unit="sample", disable=None) as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows.select(range(start, min(start + batch_size, len(rows)))).to_list()
            for row, completions in zip(batch, generate(batch), strict=True):
                scored = score(completions, row, thresholds, reward_funcs)
                counts = per_task.setdefault(row["task"], {"samples": 0, "generated": 0, "passed": 0, "kept": 0})
                counts["samples"] += 1
                counts["generated"] += len(scored)
                counts["passed"] += sum(s.passed for s in scored)
                generated += len(scored)
                chosen = best(scored)
                if chosen is not None:
                    kept[row["id"]] = chosen
                    counts["kept"] += 1
            bar.update(len(batch))
            bar.set_postfix(kept=len(kept))
    return kept, {"generated": generated, "per_task": per_task}


def _samples(data_dir: Path, split: str, kept: dict[str, Scored], out_split: str, model: str) -> list:
    """The kept rows with every column of the source dataset (media paths included), their new targets and meta."""
    from datasets import load_from_disk

    from data_builders.schema import Sample

    source = load_from_disk(str(data_dir))[split]
    names = [f.name for f in fields(Sample) if f.name in source.column_names]
    indices = [i for i, sample_id in enumerate(source["id"]) if sample_id in kept]
    samples = []
    for row in source.select(indices).select_columns(names).to_list():
        for name in JSON_COLUMNS:
            if name in row:
                row[name] = json.loads(row[name])
        chosen = kept[row["id"]]
        row["meta"] = {
            **row.get("meta", {}),
            "synthesized_from": model,
            "reward": chosen.total,
            "rewards": chosen.rewards,
        }
        row["target"], row["split"] = chosen.completion, out_split
        samples.append(Sample(**row))
    return samples


def _absolute(path) -> str:
    return os.path.abspath(path) if isinstance(path, Path) else str(path)  # a hub id stays as it is


def _thresholds_text(thresholds: dict[str, float]) -> str:
    return ", ".join(f"{name} >= {value:g}" for name, value in thresholds.items() if value > -math.inf)


def summary_line(synthesis: dict, out) -> str:
    per_task = ", ".join(f"{task} {c['kept']}/{c['samples']}" for task, c in sorted(synthesis["per_task"].items()))
    generated = sum(c["generated"] for c in synthesis["per_task"].values())
    passed = sum(c["passed"] for c in synthesis["per_task"].values())
    return (
        f"kept {synthesis['kept']} of {synthesis['samples']} samples ({per_task}); {passed} of {generated} "
        f"completions passed -> {out}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoreason train synthesize",
        description="Sample completions for a dataset's split, keep the best that the rewards pass, write them as SFT "
        "data (stage 3, self-improvement).",
    )
    parser.add_argument("--model", required=True, help="EmoReason checkpoint or training output folder")
    parser.add_argument("--data", required=True, help="dataset folder written by `emoreason data build`")
    parser.add_argument("--out", required=True, help="output dataset folder: new, empty, or one emoreason wrote")
    parser.add_argument("--split", default="train", help="the split to synthesize from (default train)")
    parser.add_argument("--out-split", default="train", help="the split the kept samples are written to")
    parser.add_argument("--task", action="append", choices=["expr", "au", "va", "ah"], help="repeatable; default all")
    parser.add_argument("--num-generations", type=int, default=4, help="completions sampled per sample")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument(
        "--min-reward",
        action="append",
        metavar="NAME=VALUE",
        help=f"repeatable; a kept completion must reach these (defaults: {_thresholds_text(DEFAULT_THRESHOLDS)}; "
        "format is fixed at 1; NAME=-inf turns a check off; rewards that do not apply to a sample always pass)",
    )
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="sample inside the answer grammar (as served), so every completion parses; the rewards judge the rest",
    )
    parser.add_argument("--max-samples", type=int, default=None, help="a random subset of the split (by --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call")
    return parser


def run_cli(options: list[str]) -> int:
    parser = build_parser()
    if not any(o in ("-h", "--help") for o in options):
        parser.error = _raise_usage_error  # one line, not argparse's usage block and exit 2
    args = parser.parse_args(options)
    synthesis = synthesize(
        args.model,
        args.data,
        args.out,
        split=args.split,
        tasks=args.task,
        num_generations=args.num_generations,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        thresholds=parse_thresholds(args.min_reward),
        max_samples=args.max_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        constrained=args.constrained,
        out_split=args.out_split,
    )
    print(summary_line(synthesis, args.out))
    return 0


def _raise_usage_error(message: str):
    raise ValueError(message)
