"""What both training stages share: the model made trainable, the run folder, checkpoints that carry the new
modules, and the final model folder that `emoreason analyze --model`, `serve` and `demo` load.

    OUTPUT_DIR/
      checkpoint-N/     trainer checkpoints (adapter, new modules, optimizer, scheduler, RNG, state); a checkpoint
                        counts once `.emoreason-complete` is in it (`--resume` takes the last such one)
      runs/             TensorBoard logs
      model/            the final model: config.json + model.safetensors (the base as trained: its language model
                        without the adapter, the new modules trained), processor files, adapter/ (PEFT LoRA on the
                        language model), README.md (our model card), train_report.json, served/language_model +
                        served/lora (the vLLM export); see train/final_model.py
      rollouts/         GRPO with use_vllm only, while it runs: the language model vLLM samples from and the
                        policy's current adapter (train/rollouts.py); removed when the run ends, reused by --resume

Nothing else is written into OUTPUT_DIR: TRL's model card (README.md, at every checkpoint) is not, so a user's
README.md there stays theirs. How the folder is claimed, resumed and taken back after an early failure:
train/run_folder.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from train.final_model import is_zero3
from train.run_folder import COMPLETE, claim_run_dir, taken_back_on_failure

NEW_MODULES_FILE = "new_modules.safetensors"

# ---------------------------------------------------------------------------------------------------------------
# The model


def check_model(recipe) -> Path:
    """The starting checkpoint's folder, its files checked (one line naming what is missing or broken)."""
    from mllm.checkpoints import check_checkpoint, resolve_checkpoint

    model_dir = resolve_checkpoint(recipe.model)
    check_checkpoint(model_dir, processor=True)
    return Path(model_dir)


def load_model_and_processor(recipe):
    """The starting checkpoint (an earlier stage's adapter merged into its language model) and its processor."""
    from mllm.export import load_model
    from mllm.processor import EmoReasonProcessor

    model_dir = check_model(recipe)
    dtype = (recipe.model_init_kwargs or {}).get("dtype")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else None
    model = load_model(model_dir, dtype=dtype, adapter="merge")
    return model, EmoReasonProcessor.from_pretrained(model_dir), Path(model_dir)


def load_inputs(recipe):
    """The checks and loads both stages start with: (label space, training rows, checkpoint to resume from, model,
    processor). The data and the model are checked before the run folder is claimed, so bad input leaves none."""
    from data_builders.read import dataset_label_space, load_split

    space = dataset_label_space(recipe.data)
    train = load_split(recipe.data, recipe.train_split, recipe.tasks, recipe.max_train_samples, recipe.seed)
    check_model(recipe)
    resume_from = claim_run_dir(recipe, protect=[recipe.model, recipe.data])
    model, processor, _ = load_model_and_processor(recipe)
    return space, train, resume_from, model, processor


def run_stage(build_trainer, recipe, **report) -> Path | None:
    """Build a stage's trainer, train (from the checkpoint to resume from, if any) and write the final model with a
    report: `report` (stage name, its own settings) plus what every run records."""
    import time

    from train.final_model import write_final_model

    started = time.time()
    with taken_back_on_failure(recipe.output_dir):
        trainer, processor, space, resume_from = build_trainer(recipe)
        result = trainer.train(resume_from_checkpoint=resume_from)
    from accelerate.utils import gather_object

    report = {
        **report,
        "started_from": recipe.model,
        "data": recipe.data,
        "label_space": space,
        "global_step": trainer.state.global_step,
        "train_loss": run_loss(trainer.state.log_history, result.training_loss, resume_from),
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - started, 1),
        "processes": trainer.accelerator.num_processes,
        # One digest of the trained weights per process: under data parallelism they must all be equal (under
        # ZeRO-3 each process holds a different slice, so there is nothing to compare).
        "weights_sha256_per_process": None
        if is_zero3(trainer)
        else gather_object([trained_weights_digest(trainer.model)]),
        **(trainer.stage_report() if hasattr(trainer, "stage_report") else {}),
    }
    return write_final_model(trainer, processor, space, report)


def run_loss(log_history: list[dict], this_call: float, resumed_from: str | None) -> float | None:
    """The mean training loss of the run. transformers' `training_loss` covers only the steps of this `train()`
    call (0.0 for a run resumed at its last step): a resumed run's is the mean of the logged losses, each weighted
    by the steps it covers (None if none was logged)."""
    if resumed_from is None:
        return this_call
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += float(entry["loss"]) * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def trained_weights_digest(model) -> str:
    """SHA-256 over the trainable parameters (adapter and new modules), by name: equal digests, equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_trainable(model, recipe, lora: bool, new_modules: bool):
    """LoRA on the language model only (vLLM serves nothing else); the new modules trained in full when asked.
    Returns the model to train (PEFT-wrapped when `lora`)."""
    from mllm.export import language_model_lora_config

    model.freeze_base()
    trainable = model
    if lora:
        from peft import get_peft_model
        from transformers import set_seed

        set_seed(recipe.seed)  # LoRA's A matrices start random: the same seed gives the same run

        config = language_model_lora_config(
            model, r=recipe.lora_r, alpha=recipe.lora_alpha, dropout=recipe.lora_dropout
        )
        trainable = get_peft_model(model, config)  # marks only the adapter trainable
    model.set_trainable_new_modules(new_modules)
    if recipe.gradient_checkpointing:
        model.config.use_cache = False
    return trainable


def parameter_groups(model, learning_rate: float, new_modules_lr: float | None, weight_decay: float) -> list[dict]:
    """The adapter at `learning_rate`, the new modules at `new_modules_lr` (their own rate); no weight decay on
    biases and norms."""
    composed = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = {id(p) for p in composed.new_module_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
            groups.setdefault((id(p) in new, no_decay), []).append(p)
    lr_new = learning_rate if new_modules_lr is None else new_modules_lr
    return [
        {
            "params": params,
            "lr": lr_new if is_new else learning_rate,
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (is_new, no_decay), params in sorted(groups.items())
    ]


def new_module_state(model, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The new modules' weights by their names in the composed model. Under DeepSpeed ZeRO-3 the parameters are
    partitioned (empty on each process): pass the full `state_dict` the trainer gathered, keyed as `model` names
    its parameters (PEFT's `base_model.model.` prefix included)."""
    composed = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = {id(p) for p in composed.new_module_parameters()}
    names = [n for n, p in composed.named_parameters() if id(p) in new]
    if state_dict is None:
        params = dict(composed.named_parameters())
        return {n: params[n].detach().cpu().contiguous() for n in names}
    prefix = "base_model.model." if composed is not model else ""
    return {n: state_dict[prefix + n].detach().cpu().contiguous() for n in names}


class EmoReasonTrainerMixin:
    """Put before TRL's trainer class: the new modules get their own learning rate and travel in checkpoints
    (PEFT checkpoints hold only the adapter), and a checkpoint is marked complete once everything is written."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            from transformers import Trainer

            optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("lr", None)
            groups = parameter_groups(
                self.model, self.args.learning_rate, self.args.new_modules_lr, self.args.weight_decay
            )
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save and hasattr(self.model, "get_base_model"):
            from safetensors.torch import save_file

            state = new_module_state(self.model, state_dict if is_zero3(self) else None)
            save_file(state, os.path.join(output_dir or self.args.output_dir, NEW_MODULES_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / NEW_MODULES_FILE
        if path.exists():
            from safetensors.torch import load_file

            composed = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            saved = load_file(path)
            params = dict(composed.named_parameters())
            missing = sorted(set(new_module_state(self.model)) - set(saved))
            if missing:
                raise ValueError(f"{path}: lacks new-module weights {missing[:3]}")
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    def create_model_card(self, *args, **kwargs):
        """Nothing: TRL writes its card (`fine-tuned version of [None]`) to OUTPUT_DIR/README.md at every checkpoint,
        over a user's file of that name. Ours is written into the final model folder (train/final_model.py)."""

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the last step's checkpoint (a kill while the final model was being written): nothing is left
        # to train, but transformers' epoch loop would run one more step before it checks ("step 5 of 4").
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from mllm.outputs import atomic_write_text

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                atomic_write_text(folder / COMPLETE, json.dumps({"step": self.state.global_step}))
