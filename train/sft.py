"""Stage 1, supervised fine-tuning (and the optional stage 0, projector alignment), with TRL's `SFTTrainer`.

    emoreason train sft --config train/recipes/sft_tiny_cpu.yaml [--model DIR] [--data DIR] [--output_dir DIR]
                        [--max_steps N] [--resume] [any SFTConfig / TrainingArguments field]

Our processor is the collator (media decoded, faces tracked, placeholders expanded, labels on the assistant turn
only); LoRA sits on the language model only, the new modules train in full at their own learning rate. TRL's loss
runs `model.base_model` and the LM head itself (`add_fused_lm_head`): the composed model's `base_model` builds its
inputs from the media through `build_inputs_embeds`, so the loss sees every modality.
"""

from __future__ import annotations

import time

from trl import SFTTrainer

from train.model import EmoReasonTrainerMixin


class EmoReasonSFTTrainer(EmoReasonTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer; the mixin adds only the new modules' learning rate and their place in checkpoints."""


def build_trainer(recipe):
    """(trainer, processor, label space, checkpoint to resume from): everything checked and loaded, nothing run."""
    from train.data import SFTCollator, dataset_label_space, load_split
    from train.model import check_model, claim_run_dir, load_model_and_processor, make_trainable
    from train.progress import SampleCompletions

    space = dataset_label_space(recipe.data)
    train = load_split(recipe.data, recipe.train_split, recipe.tasks, recipe.max_train_samples, recipe.seed)
    evaluation = load_split(recipe.data, recipe.eval_split, recipe.tasks) if recipe.eval_split else None
    check_model(recipe)
    resume_from = claim_run_dir(recipe, protect=[recipe.model, recipe.data])  # inputs checked first
    model, processor, _ = load_model_and_processor(recipe)
    lora = recipe.stage == "sft" and recipe.lora_r > 0
    trainable = make_trainable(model, recipe, lora=lora, new_modules=recipe.new_modules_lr != 0)
    if not any(p.requires_grad for p in trainable.parameters()):
        raise ValueError("nothing to train: lora_r is 0 and new_modules_lr is 0")
    recipe.dataset_kwargs = {**(recipe.dataset_kwargs or {}), "skip_prepare_dataset": True}
    trainer = EmoReasonSFTTrainer(
        model=trainable,
        args=recipe,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor.tokenizer,
        data_collator=SFTCollator(processor, recipe.max_length),
    )
    shown_rows = (evaluation if evaluation is not None else train).select(range(min(3, len(train))))
    trainer.add_callback(SampleCompletions(trainer, processor, shown_rows, recipe.sample_every))
    return trainer, processor, space, resume_from


def main(recipe):
    from train.model import write_final_model

    started = time.time()
    trainer, processor, space, resume_from = build_trainer(recipe)
    result = trainer.train(resume_from_checkpoint=resume_from)
    report = {
        "stage": recipe.stage,
        "started_from": recipe.model,
        "data": recipe.data,
        "label_space": space,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - started, 1),
    }
    return write_final_model(trainer, processor, space, report)
