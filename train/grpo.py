"""Stage 2, GRPO with expression and action-unit rewards, on TRL's `GRPOTrainer`.

    emoreason train grpo --config train/recipes/grpo_tiny_cpu.yaml --model runs/sft [--max_steps N] [--resume]

TRL's GRPOTrainer treats a model as multimodal only through a `ProcessorMixin` and forwards a fixed list of image
keys; our audio, landmarks and frames would be dropped silently. The subclass below changes four methods and
nothing else:

- `_tokenize_prompts`: our processor renders each prompt (a chat naming its media) into token ids and the media
  tensors of that sample, kept per sample;
- `_generate_single_turn`: sampling with the composed model's `generate` (embeddings from the seam), placeholder
  tokens suppressed;
- `_get_per_token_logps_and_entropies`: every log-probability (policy, old policy, reference) is computed with
  the media of the rows it scores;
- `_generate_and_score_completions` / `compute_loss`: the per-sample media travel with the buffered batch
  (TRL shuffles and splits lists in unison with the tensors).

The reference model is the policy with its adapter disabled (no second copy): the SFT model, whose adapter was
merged at load. The new modules stay frozen by default, so that reference is exactly the SFT model.

Generation: transformers `generate` by default; with `use_vllm: true`, a vLLM engine in this process fed our
embeddings and the policy's current LoRA (train/rollouts.py). TRL's own vLLM paths send token ids and images only,
so they are not used: TRL is told `use_vllm` only after its set-up, for its importance-sampling correction.
"""

from __future__ import annotations

import copy
import json

import torch
from trl import GRPOTrainer

from mllm.processor import concat_media
from train.model import EmoReasonTrainerMixin


class EmoReasonGRPOTrainer(EmoReasonTrainerMixin, GRPOTrainer):
    """GRPOTrainer that carries our media through generation, every log-probability and the loss."""

    def __init__(self, *args, processor, rollout_model=None, **kwargs):
        self.media_processor = processor
        self._media_rows: list[dict] | None = None
        self.rollouts = None
        config = kwargs["args"]
        use_vllm, config.use_vllm = config.use_vllm, False  # TRL's own vLLM set-up would load token-ids-only vLLM
        try:
            super().__init__(*args, **kwargs)
        finally:
            config.use_vllm = use_vllm
        if use_vllm:
            from train.rollouts import VLLMRollouts

            self.use_vllm = True  # TRL's importance-sampling correction and its metrics follow this flag
            composed = self.accelerator.unwrap_model(self.model).get_base_model()
            self.rollouts = VLLMRollouts(rollout_model, config, composed, self.accelerator)

    def stage_report(self) -> dict:
        """What the run's report records of this stage's sampling."""
        return {"rollouts": self.rollouts.report if self.rollouts is not None else {"engine": "transformers"}}

    def train(self, *args, **kwargs):
        finished = False
        try:
            result = super().train(*args, **kwargs)
            finished = True
            return result
        finally:
            if self.rollouts is not None:  # a run that ends keeps nothing of vLLM's; a failed one leaves it to resume
                self.rollouts.close(remove=finished)

    # Prompts -> ids + per-sample media ----------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts: list):
        ids, rows, done = [], [], {}
        for prompt in prompts:  # the schema's JSON chat; a group's G copies are rendered once
            if prompt not in done:
                batch = self.media_processor([json.loads(prompt)], add_generation_prompt=True)
                keep = batch.pop("attention_mask")[0].bool()
                done[prompt] = (batch.pop("input_ids")[0][keep].tolist(), batch)
            ids.append(done[prompt][0])
            rows.append(done[prompt][1])
        self._media_rows = rows
        return ids, None, {}

    def _rows(self, n: int) -> list[dict]:
        if self._media_rows is None or len(self._media_rows) != n:
            raise RuntimeError(f"media of {n} rows expected, have {len(self._media_rows or [])}: batch misaligned")
        return self._media_rows

    # Sampling -----------------------------------------------------------------------------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.rollouts is not None:
            return self._generate_in_vllm(prompt_ids)
        from trl.models import unwrap_model_for_generation
        from trl.trainer.utils import pad

        device = self.accelerator.device
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left").to(device)
        media = concat_media(self._rows(len(prompt_ids)), device)
        config = self.accelerator.unwrap_model(self.model).config
        generation_config = copy.copy(self.generation_config)
        # A sampled placeholder would have no media to fill it.
        generation_config.suppress_tokens = [config.image_token_id, config.audio_token_id]
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):
            # Generated tokens only: the composed model generates from embeddings, the prompt is not repeated.
            completion_ids = unwrapped.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                **media,
            )
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device))
        lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completion_ids.size(1))
        return [c[: int(n)].tolist() for c, n in zip(completion_ids.cpu(), lengths.cpu(), strict=True)], None

    def _generate_in_vllm(self, prompt_ids):
        """Completions and their sampling log-probabilities from vLLM: the prompts' embeddings from this step's
        model, the policy's adapter synced every `vllm_sync_steps` optimiser steps."""
        from trl.extras.profiling import profiling_context

        from serve.engine import encode_prompts

        rollouts = self.rollouts
        peft_model = self.accelerator.unwrap_model(self.model)
        composed = peft_model.get_base_model()
        step = self.state.global_step
        if rollouts.synced_step is None or step - rollouts.synced_step >= self.args.vllm_sync_steps:
            with profiling_context(self, "sync_weights"):
                rollouts.sync(peft_model, composed, step)
        rows = self._rows(len(prompt_ids))
        unique: dict[int, int] = {}  # a group's copies share their rows: each prompt is encoded once
        for row in rows:
            unique.setdefault(id(row), len(unique))
        firsts = {}
        for ids, row in zip(prompt_ids, rows, strict=True):
            firsts.setdefault(id(row), (ids, row))
        order = list(firsts.values())
        prompts = encode_prompts(
            composed,
            [torch.tensor(ids) for ids, _ in order],
            concat_media([row for _, row in order], self.accelerator.device),
            self._tokenizer.pad_token_id,
            rollouts.dtype,
        )
        prompts = [prompts[unique[id(row)]] for row in rows]
        params = rollouts.sampling_params(
            self.args, self.args.generation_kwargs, stop_token_ids=list(self.eos_token_ids)
        )
        with profiling_context(self, "vLLM.generate"):
            return rollouts.generate(prompts, params)

    # Log-probabilities --------------------------------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_fields,  # TRL's image keys; always empty here, our media come from the rows
    ):
        rows = self._rows(input_ids.size(0))
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100  # only the completion is scored
            with self.accelerator.autocast():
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    labels=labels,
                    fused_lm_head=True,
                    **concat_media(rows[start:end], ids.device),
                )
            all_logps.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(out.entropy[:, -logits_to_keep:])
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None

    # The media travel with the buffered batch ------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        self._media_rows = None
        output = super()._generate_and_score_completions(inputs)
        output["media"] = self._media_rows
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._media_rows = inputs["media"]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def build_trainer(recipe):
    """(trainer, processor, label space, checkpoint to resume from): everything checked and loaded, nothing run."""
    from mllm.export import language_model_lora_config
    from train.model import load_inputs
    from train.rewards import get_reward_funcs

    space, train, resume_from, model, processor = load_inputs(recipe)
    model.freeze_base()
    model.frozen_encoders_in_eval = True  # the audio encoder's dropout would differ between policy, old and reference
    rollout_model = None
    if recipe.use_vllm:  # the language model vLLM samples from: exported before GRPO's adapter wraps it
        from train.model import check_model
        from train.rollouts import export_rollout_model

        rollout_model = export_rollout_model(model, processor.tokenizer, recipe, check_model(recipe))
    rewards = get_reward_funcs(recipe.rewards, {"length": {"max_chars": recipe.length_max_chars}})
    # TRL wraps the model in the adapter itself: a model handed over already wrapped would get a second, "ref"
    # adapter as its reference; a fresh adapter's reference is the model with the adapter disabled.
    lora = language_model_lora_config(model, r=recipe.lora_r, alpha=recipe.lora_alpha, dropout=recipe.lora_dropout)
    trainer = EmoReasonGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=recipe,
        train_dataset=train,
        processing_class=processor.tokenizer,
        processor=processor,
        peft_config=lora,
        rollout_model=rollout_model,
    )
    model.set_trainable_new_modules(recipe.train_new_modules)  # PEFT left only the adapter trainable
    return trainer, processor, space, resume_from


def main(recipe):
    from train.model import run_stage

    return run_stage(build_trainer, recipe, stage="grpo", rewards=recipe.rewards, reward_weights=recipe.reward_weights)
