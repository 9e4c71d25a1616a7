"""The final model folder, OUTPUT_DIR/model: the weights, the processor, the train report, our model card, the vLLM
export, and a manifest of what was written, so that a later `--resume` (which replaces the folder) can tell a file
the user added or edited there from ours and refuse before it loads anything.

    model/
      config.json, model.safetensors, processor and tokenizer files, adapter/
      train_report.json   the run: settings, steps, losses, log history
      README.md           the model card (base model, dataset, recipe, metrics); TRL's card is never written
      served/             the vLLM export (kept by mllm.export, keyed by content)
      .emoreason-manifest.json
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CARD = "README.md"
CARD_TAG = "<!-- model card written by `emoreason train` -->"
MANIFEST = ".emoreason-manifest.json"
SERVED = "served"  # the export cache: mllm.export rewrites it whenever the weights change
_HASHED_BELOW = 1 << 20  # small files (configs, the card) by content; weights by size (nobody edits those by hand)
# Recipe fields the card shows (those that decide what was trained and how).
CARD_FIELDS = (
    "stage",
    "train_split",
    "tasks",
    "max_train_samples",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "new_modules_lr",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "max_length",
    "seed",
    "rewards",
    "reward_weights",
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "beta",
    "train_new_modules",
)


def is_zero3(trainer) -> bool:
    """Whether `trainer` runs DeepSpeed ZeRO-3, where every process holds only a slice of each weight."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)


def write_final_model(trainer, processor, label_space: str, report: dict) -> Path | None:
    """OUTPUT_DIR/model, written under a temporary name and renamed into place, then its vLLM export and the
    manifest. Only the main process writes; returns the folder there (None elsewhere)."""
    from mllm.outputs import atomic_dir, atomic_write_text

    trainer.accelerator.wait_for_everyone()
    # Under ZeRO-3 every process holds a slice of each weight: all take part in gathering the whole state.
    gathered = trainer.accelerator.get_state_dict(trainer.model) if is_zero3(trainer) else None
    if not trainer.is_world_process_zero():
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    final = Path(trainer.args.output_dir) / "model"
    peft = hasattr(model, "get_base_model")
    composed = model.get_base_model() if peft else model
    composed.config.label_space = label_space
    full = gathered if gathered is not None else model.state_dict()
    with atomic_dir(final) as tmp:
        if peft:
            model.save_pretrained(tmp / "adapter", state_dict=gathered)
            # The base as trained, without the adapter's layers: LoRA's wrapped linears saved under their own names.
            state = {
                k.removeprefix("base_model.model.").replace(".base_layer.", "."): v.detach().cpu().contiguous()
                for k, v in full.items()
                if "lora_" not in k
            }
            composed.save_pretrained(tmp, state_dict=state)
        else:
            composed.save_pretrained(tmp, state_dict=gathered)
        processor.save_pretrained(tmp)
        atomic_write_text(tmp / "train_report.json", json.dumps(report, indent=1, default=str) + "\n")
        card = model_card(
            trainer.args, report, getattr(composed.config, "base_model", None), len(trainer.train_dataset)
        )
        atomic_write_text(tmp / CARD, card)
    export_final_model(final)
    write_manifest(final)
    return final


def export_final_model(final: Path) -> None:
    """The ready-to-serve export of a final model folder (language model + LoRA, keyed by content)."""
    from mllm.export import load_model, served_model
    from mllm.processor import EmoReasonProcessor

    served_model(
        final, lambda: (load_model(final, adapter="ignore"), EmoReasonProcessor.from_pretrained(final).tokenizer)
    )


# ---------------------------------------------------------------------------------------------------------------
# What is ours in the folder


def _files(final: Path) -> list[Path]:
    """Files under `final`, the export cache and leftovers of killed writes aside."""
    from mllm.outputs import TMP_TAG

    found = []
    for path in sorted(final.rglob("*")):
        rel = path.relative_to(final)
        if rel.parts[0] == SERVED or any(TMP_TAG in part for part in rel.parts) or rel.name == MANIFEST:
            continue
        if path.is_file() or path.is_symlink():
            found.append(path)
    return found


def _fingerprint(path: Path) -> list:
    size = path.lstat().st_size
    if path.is_symlink() or size >= _HASHED_BELOW:
        return [size, None]
    return [size, hashlib.sha256(path.read_bytes()).hexdigest()]


def write_manifest(final: Path) -> None:
    from mllm.outputs import atomic_write_text

    manifest = {str(p.relative_to(final)): _fingerprint(p) for p in _files(final)}
    atomic_write_text(final / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True) + "\n")


def files_not_ours(final: Path) -> list[str]:
    """Files in a final model folder that emoreason did not write, or that changed since (a user's notes, an edited
    card): replacing the folder would lose them. A folder without a manifest (written before manifests, or by a run
    killed before its export finished) is judged by its card alone."""
    try:
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        card = final / CARD
        if card.is_file() and CARD_TAG not in card.read_text(encoding="utf-8", errors="replace")[:4096]:
            return [CARD]
        return []
    changed = []
    for path in _files(final):
        rel = str(path.relative_to(final))
        try:
            same = manifest.get(rel) == _fingerprint(path)
        except OSError:
            same = False
        if not same:
            changed.append(rel)
    return changed


# ---------------------------------------------------------------------------------------------------------------
# The model card


def model_card(recipe, report: dict, base_model: str | None, train_samples: int) -> str:
    """README.md of the final model: what it was trained from and on, how, and the run's numbers."""
    stage = report.get("stage", "sft")
    data = os.path.abspath(recipe.data)
    dataset = _dataset_name(Path(data))
    started_from = recipe.model if not os.path.exists(recipe.model) else os.path.abspath(recipe.model)
    last = next((h for h in reversed(report.get("log_history", [])) if "loss" in h), {})
    settings = {name: getattr(recipe, name) for name in CARD_FIELDS if hasattr(recipe, name)}
    settings = {k: getattr(v, "value", v) for k, v in settings.items() if v is not None}
    metrics = {
        "global_step": report.get("global_step"),
        "epoch": last.get("epoch"),
        "train_loss (mean over the run)": report.get("train_loss"),
        **{f"last logged {k}": v for k, v in last.items() if k not in ("epoch", "step")},
        "seconds": report.get("seconds"),
        "processes": report.get("processes"),
    }
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if v is not None)
    recipe_lines = "\n".join(f"{k}: {json.dumps(v)}" for k, v in settings.items())
    return f"""---
library_name: emoreason
base_model: {json.dumps(str(base_model or started_from))}
tags: [emoreason, {stage}, lora, emotion-recognition]
---
{CARD_TAG}

# EmoReason, {stage} stage

An EmoReason model (a multimodal LLM that reasons about facial expression, voice and action units before it
answers), trained with `emoreason train {stage}`.

| | |
| --- | --- |
| base model (the open MLLM) | `{base_model or "unknown"}` |
| started from | `{started_from}` |
| dataset | {dataset} at `{data}`, split `{recipe.train_split}` ({train_samples} samples) |
| label space | {report.get("label_space")} |

## Use

    emoreason analyze MEDIA --model {Path(recipe.output_dir).resolve()}
    emoreason serve --model {Path(recipe.output_dir).resolve()}

## Recipe

```yaml
{recipe_lines}
```

## Training metrics (train_report.json)

| metric | value |
| --- | --- |
{rows}
"""


def _dataset_name(data: Path) -> str:
    try:
        name = json.loads((data / "build_report.json").read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        name = None
    return f"`{name}`" if name else "a dataset"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
