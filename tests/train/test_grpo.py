"""Stage 2: inside TRL's GRPOTrainer, every log-probability (policy, old policy, reference) sees the media of the
rows it scores, the reference is the policy with its adapter disabled, and the command runs from an SFT output."""

import json
from pathlib import Path

import torch

from mllm.cli import main

GRPO_RECIPE = Path(__file__).resolve().parents[2] / "train" / "recipes" / "grpo_tiny_cpu.yaml"


def _args(model, data, out, *extra):
    return ["--config", str(GRPO_RECIPE), "--model", str(model), "--data", str(data), "--output_dir", str(out),
            "--report_to", "none", "--log_completions", "false", *map(str, extra)]  # fmt: skip


def test_media_reach_policy_old_and_reference_logprobs(tiny_dir, av_data, tmp_path):
    from train.config import GRPORecipe, parse_recipe
    from train.grpo import build_trainer

    # num_iterations 2: the samples are reused, so TRL computes old-policy log-probabilities too; beta > 0: the
    # reference's.
    recipe = parse_recipe(GRPORecipe, _args(tiny_dir / "emoreason", av_data, tmp_path / "run", "--max_steps", 1,
                          "--num_generations", 2, "--per_device_train_batch_size", 2, "--max_completion_length", 8,
                          "--num_iterations", 2, "--beta", 0.1))  # fmt: skip
    trainer = build_trainer(recipe)[0]
    lora_layers = [m for m in trainer.model.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]
    assert lora_layers
    original = trainer._get_per_token_logps_and_entropies
    calls = []

    def spy(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        out = original(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        rows = trainer._media_rows
        assert all("pixel_values" in r and "audio_values" in r for r in rows)
        changed = {}
        with torch.no_grad():
            for key in ("audio_values", "image_landmarks", "pixel_values"):
                trainer._media_rows = [{**r, key: torch.zeros_like(r[key])} for r in rows]
                other = original(model, input_ids, attention_mask, logits_to_keep)[0]
                changed[key] = not torch.allclose(other, out[0].detach(), atol=1e-6)
            trainer._media_rows = rows
        calls.append(
            {
                "adapter": not lora_layers[0].disable_adapters,
                "grad": torch.is_grad_enabled(),
                "changed": changed,
            }
        )
        return out

    trainer._get_per_token_logps_and_entropies = spy
    trainer.train()
    kinds = {(c["adapter"], c["grad"]) for c in calls}
    # old policy (adapter on, no grad), reference (adapter off, no grad), policy in the loss (adapter on, grad)
    assert kinds == {(True, False), (False, False), (True, True)}, calls
    for call in calls:
        assert all(call["changed"].values()), call  # each modality moved every log-probability


def test_reference_is_the_policy_without_its_adapter(tiny_dir, av_data, tmp_path):
    """No second model: the reference log-probabilities are the start model's (the adapter disabled)."""
    from train.config import GRPORecipe, parse_recipe
    from train.grpo import build_trainer

    recipe = parse_recipe(GRPORecipe, _args(tiny_dir / "emoreason", av_data, tmp_path / "run", "--max_steps", 1,
                          "--num_generations", 2, "--per_device_train_batch_size", 2))  # fmt: skip
    trainer = build_trainer(recipe)[0]
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]  # no "ref" copy
    params = {id(p) for p in trainer.model.parameters()}
    assert len(params) == len(list(trainer.model.parameters()))  # one copy of the weights
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # new modules frozen: the reference stays the SFT model


def test_grpo_runs_from_an_sft_output(sft_run, expression_data, tmp_path):
    out = tmp_path / "grpo"
    args = _args(sft_run, expression_data, out, "--max_steps", 2, "--num_generations", 4,
                 "--per_device_train_batch_size", 4, "--max_completion_length", 24, "--save_steps", 1)  # fmt: skip
    assert main(["train", "grpo", *args]) == 0
    final = out / "model"
    report = json.loads((final / "train_report.json").read_text())
    assert report["global_step"] == 2 and report["stage"] == "grpo"
    logged = [h for h in report["log_history"] if "reward" in h]
    assert logged and all(f"rewards/{name}/mean" in logged[0] for name in ("format", "expression", "length"))
    assert (final / "adapter" / "adapter_config.json").is_file() and (final / "served" / "lora").is_dir()
    # The SFT adapter was merged into the language model GRPO started from; GRPO's own adapter sits on top.
    from safetensors.torch import load_file

    sft_lm = load_file(sft_run / "model" / "model.safetensors")
    grpo_lm = load_file(final / "model.safetensors")
    key = next(k for k in sft_lm if "layers.0.self_attn.q_proj.weight" in k)
    assert not torch.equal(sft_lm[key], grpo_lm[key])
