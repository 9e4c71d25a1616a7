"""GRPO rollouts in vLLM (`use_vllm: true`): vLLM samples with the policy's current adapter (its greedy answer is
the policy's own in transformers after 0, 1 and several optimiser steps, and the starting model's is not), the
log-probabilities it reports are the trainer's, and the run folder keeps nothing of vLLM's once the run ends."""

import json
from pathlib import Path

import torch

GRPO_RECIPE = Path(__file__).resolve().parents[2] / "train" / "recipes" / "grpo_tiny_cpu.yaml"


def _args(model, data, out, *extra):
    return ["--config", str(GRPO_RECIPE), "--model", str(model), "--data", str(data), "--output_dir", str(out),
            "--report_to", "none", "--log_completions", "false", "--use_vllm", "true", *map(str, extra)]  # fmt: skip


def _greedy_pair(trainer, prompt_json: str, n_tokens: int):
    """The greedy completion of one prompt from vLLM (with the adapter it was last synced) and from the policy in
    transformers (the current weights), and vLLM's without any adapter (the starting model: no sync)."""
    from serve.engine import encode_prompts

    rollouts = trainer.rollouts
    saved = trainer._media_rows
    ids, _, _ = trainer._tokenize_prompts([prompt_json])
    rows = trainer._media_rows
    trainer._media_rows = saved
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    composed = peft_model.get_base_model()
    media = {k: v for k, v in rows[0].items()}
    prompts = encode_prompts(composed, [torch.tensor(ids[0])], media, trainer._tokenizer.pad_token_id, "float32")
    params = rollouts.sampling_params(trainer.args, temperature=0.0, max_tokens=n_tokens, top_p=1.0, top_k=0,
                                      stop_token_ids=list(trainer.eos_token_ids))  # fmt: skip
    synced = rollouts.generate(prompts, params)[0][0]
    starting = rollouts.generate(prompts, params, lora=False)[0][0]
    was_training = peft_model.training
    peft_model.eval()
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=torch.tensor([ids[0]]),
            attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long),
            max_new_tokens=n_tokens,
            do_sample=False,
            suppress_tokens=[composed.config.image_token_id, composed.config.audio_token_id],
            eos_token_id=list(trainer.eos_token_ids),
            pad_token_id=trainer._tokenizer.pad_token_id,
            **media,
        )
    peft_model.train(was_training)
    policy = out[0].tolist()
    return synced, policy, starting


def _policy_logprobs(trainer, prompt: list[int], row: dict, completion: list[int]) -> torch.Tensor:
    """The policy's log-probability of each completion token (transformers, current weights), under the distribution
    vLLM samples from: temperature applied, the media placeholders suppressed (logit bias -100)."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = peft_model.training
    peft_model.eval()
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), **row).logits[0]
    peft_model.train(was_training)
    logits = logits[len(prompt) - 1 : -1].float() / trainer.args.temperature
    for token, bias in trainer.rollouts.suppress.items():
        logits[:, token] += bias
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def test_vllm_samples_with_the_policys_current_adapter(tiny_dir, av_data, tmp_path):
    from train.config import GRPORecipe, parse_recipe
    from train.grpo import build_trainer

    out = tmp_path / "run"
    recipe = parse_recipe(GRPORecipe, _args(tiny_dir / "emoreason", av_data, out, "--max_steps", 4,
                          "--num_generations", 4, "--per_device_train_batch_size", 4, "--max_completion_length", 12,
                          "--learning_rate", 0.05, "--beta", 0.0, "--top_p", 1.0, "--save_steps", 100,
                          # a reward that varies within a group even for a random model's text: its length
                          "--rewards", "length", "--reward_weights", 1.0, "--length_max_chars", 20))  # fmt: skip
    trainer = build_trainer(recipe)[0]
    prompt = trainer.train_dataset[0]["prompt"]  # the schema's chat, as JSON text
    assert isinstance(prompt, str) and json.loads(prompt)
    original = trainer._generate_in_vllm
    seen, differences = [], []

    def spy(prompt_ids):
        result = original(prompt_ids)  # syncs the adapter first when a step has passed
        rows = trainer._media_rows
        seen.append((trainer.state.global_step, trainer.rollouts.synced_step, *_greedy_pair(trainer, prompt, 12)))
        trainer._media_rows = rows
        completions, logprobs = result
        assert len(completions) == len(logprobs) == len(prompt_ids)
        assert all(len(c) == len(lp) for c, lp in zip(completions, logprobs, strict=True))
        for k in (0, len(prompt_ids) - 1):  # a sample of each prompt: vLLM's log-probabilities are the policy's
            ours = _policy_logprobs(trainer, list(prompt_ids[k]), rows[k], completions[k])
            differences.append(float((ours - torch.tensor(logprobs[k])).abs().max()))
        return result

    trainer._generate_in_vllm = spy
    trainer.train()
    steps = [s for s, *_ in seen]
    assert steps == [0, 1, 2, 3], steps
    for step, synced_step, synced, policy, _ in seen:
        assert synced_step == step
        assert synced == policy, f"step {step}: vLLM {synced} != policy {policy}"
    # the negative control: the starting model (what vLLM would sample without the sync) answers differently by now
    assert seen[-1][4] != seen[-1][3], "training did not move the greedy answer: the sync is not tested"
    assert seen[0][4] == seen[0][3]  # at step 0 the fresh adapter is zero: all three agree
    print("largest |vLLM - policy| log-probability per sample:", differences)
    assert len(differences) == 8 and max(differences) < 1e-4, differences  # fp32 on CPU
    # TRL's importance-sampling correction ran on them, and logged how far they are from its own (which do not
    # suppress the placeholders: the correction accounts for that), every logging step
    logged = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in h]
    assert len(logged) == 4 and all("sampling/importance_sampling_ratio/mean" in h for h in logged)
    assert all(0 <= h["sampling/sampling_logp_difference/mean"] < 0.1 for h in logged), logged
    assert not (out / "rollouts").exists()  # the run ended: nothing of vLLM's is left in the run folder
