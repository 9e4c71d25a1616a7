"""Stage 1, supervised fine-tuning (and the optional stage 0, projector alignment), with TRL's `SFTTrainer`.

    emoreason train sft --config train/recipes/sft_tiny_cpu.yaml [--model DIR] [--data DIR] [--output_dir DIR]
                        [--max_steps N] [--resume] [any SFTConfig / TrainingArguments field]

Our processor is the collator (media decoded, faces tracked, placeholders expanded, labels on the assistant turn
only); LoRA sits on the language model only, the new modules train in full at their own learning rate. TRL's loss
runs `model.base_model` and the LM head itself (`add_fused_lm_head`): the composed model's `base_model` builds its
inputs from the media through `build_inputs_embeds`, so the loss sees every modality.
"""

from __future__ import annotations

from trl import SFTTrainer

from train.model import EmoReasonTrainerMixin


class EmoReasonSFTTrainer(EmoReasonTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer; the mixin adds only the new modules' learning rate and their place in checkpoints."""


def build_trainer(recipe):
    """(trainer, processor, label space, checkpoint to resume from): everything checked and loaded, nothing run."""
    from data_builders.read import load_split
    from train.data import SFTCollator
    from train.model import load_inputs, make_trainable
    from train.progress import SampleCompletions

    evaluation = load_split(recipe.data, recipe.eval_split, recipe.tasks) if recipe.eval_split else None
    space, train, resume_from, model, processor = load_inputs(recipe)
    lora = recipe.stage == "sft" and recipe.lora_r > 0
    trainable = make_trainable(model, recipe, lora=lora, new_modules=recipe.new_modules_lr != 0)
    recipe.dataset_kwargs = {**(recipe.dataset_kwargs or {}), "skip_prepare_dataset": True}
    trainer = EmoReasonSFTTrainer(
        model=trainable,
        args=recipe,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor.tokenizer,
        data_collator=SFTCollator(processor, recipe.max_length, recipe.seed if recipe.vary_questions else None),
    )
    shown_rows = (evaluation if evaluation is not None else train).select(range(min(3, len(train))))
    trainer.add_callback(SampleCompletions(trainer, processor, shown_rows, recipe.sample_every))
    return trainer, processor, space, resume_from


def main(recipe):
    from train.model import run_stage

    return run_stage(build_trainer, recipe, stage=recipe.stage)
