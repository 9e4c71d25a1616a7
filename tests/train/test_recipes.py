"""The GPU recipes, DeepSpeed and accelerate configs parse; `emoreason compose` writes a loadable model; the memory
estimate counts parameters exactly as the real model has them.

Parsing runs on CPU: TrainingArguments refuses `bf16: true` without a GPU, so the recipes are parsed with `--bf16
false` and their own bf16 setting is checked from the YAML.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.config import GRPORecipe, SFTRecipe, parse_recipe
from train.memory import GPU_RECIPES

RECIPES = Path(__file__).parents[2] / "train" / "recipes"
GPU = sorted(GPU_RECIPES)
OVERRIDDEN = {"model", "data", "output_dir", "bf16"}


def recipe_class(name: str):
    return GRPORecipe if name.startswith("grpo_") else SFTRecipe


def parse(path: Path, tmp_path: Path, *extra: str):
    argv = ["--config", str(path), "--data", str(tmp_path), "--model", str(tmp_path)]
    return parse_recipe(recipe_class(path.name), [*argv, "--output_dir", str(tmp_path / "run"), *extra])


def same(parsed, expected) -> bool:
    """A parsed value equals the YAML's (enums such as lr_scheduler_type compare by their value)."""
    return parsed == expected or str(getattr(parsed, "value", parsed)) == str(expected)


@pytest.mark.parametrize("name", GPU)
def test_gpu_recipe_parses_with_every_field(name, tmp_path):
    raw = yaml.safe_load((RECIPES / name).read_text())
    recipe = parse(RECIPES / name, tmp_path, "--bf16", "false")
    different = {
        k: (getattr(recipe, k), v) for k, v in raw.items() if k not in OVERRIDDEN and not same(getattr(recipe, k), v)
    }
    assert not different, different


@pytest.mark.parametrize("name", GPU)
def test_gpu_recipe_settings(name):
    raw = yaml.safe_load((RECIPES / name).read_text())
    assert raw["bf16"] is True and raw["gradient_checkpointing"] is True
    assert raw["model_init_kwargs"] == {"dtype": "bfloat16"}
    assert raw["report_to"] == ["tensorboard"] and raw["save_steps"] > 0
    assert not raw.get("use_cpu", False)
    assert raw["learning_rate"] > 0 and raw["lora_r"] > 0
    if name.startswith("grpo_"):
        assert raw["use_vllm"] is True and 0 < raw["vllm_gpu_memory_utilization"] < 0.5  # colocated rollouts
        steps = raw.get("steps_per_generation", raw["gradient_accumulation_steps"])
        assert raw["per_device_train_batch_size"] * steps % raw["num_generations"] == 0
    text = (RECIPES / name).read_text()
    assert "emoreason train" in text and "estimate" in text.lower()  # how to launch, and the memory estimate


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    extra = ["--bf16", "false"] if raw.get("bf16") else []
    assert parse(path, tmp_path, *extra).output_dir == str(tmp_path / "run")


def test_unknown_field_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / GPU[0]).read_text() + "not_a_field: 1\n")
    with pytest.raises((ValueError, SystemExit)):
        parse(bad, tmp_path, "--bf16", "false")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    config = json.loads((RECIPES / "deepspeed" / f"zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"  # filled in from the recipe by transformers' DeepSpeed integration
    assert config["bf16"]["enabled"] == "auto"
    # The trainer builds the optimizer and scheduler: the new modules keep their own learning rate.
    assert "optimizer" not in config and "scheduler" not in config


@pytest.mark.parametrize("name, stage", [("multi_gpu", None), ("zero2", 2), ("zero3", 3), ("multi_node_zero3", 3)])
def test_accelerate_configs(name, stage):
    config = yaml.safe_load((RECIPES / "accelerate" / f"{name}.yaml").read_text())
    assert config["mixed_precision"] == "bf16" and config["use_cpu"] is False
    if stage is None:
        assert config["distributed_type"] == "MULTI_GPU"
    else:
        assert config["distributed_type"] == "DEEPSPEED"
        ds_file = Path(__file__).parents[2] / config["deepspeed_config"]["deepspeed_config_file"]
        assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == stage
    if name == "multi_node_zero3":
        assert config["num_machines"] > 1 and config["num_processes"] % config["num_machines"] == 0
        assert config["machine_rank"] == 0 and config["main_process_ip"] and config["main_process_port"]
    else:
        assert config["num_machines"] == 1


# ---------------------------------------------------------------------------------------------------------------
# emoreason compose


@pytest.fixture(
    scope="module", params=["tiny_dir", "tiny_llava_onevision_dir", "tiny_qwen2_5_vl_dir", "tiny_qwen3_vl_dir"]
)
def composed(request, tmp_path_factory):
    from mllm.compose import compose

    parts = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp("composed")
    folder = compose(parts / "base", parts / "audio", out, dtype="float32", seed=3, label_space="basic7")
    return parts, out, folder


def test_compose_writes_a_loadable_model(composed):
    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.processor import EmoReasonProcessor

    parts, out, folder = composed
    model = EmoReasonForConditionalGeneration.from_pretrained(str(out))  # finds OUT/model, as for a training run
    processor = EmoReasonProcessor.from_pretrained(folder)
    assert model.config.label_space == "basic7" and model.config.base_model == str(parts / "base")
    assert processor.tokenizer.convert_tokens_to_ids(model.config.audio_token) == model.config.audio_token_id
    made_tiny = EmoReasonForConditionalGeneration.from_pretrained(str(parts / "emoreason"))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in made_tiny.parameters())
    assert not [p.name for p in out.iterdir() if ".emoreason-tmp-" in p.name]


def test_compose_again_replaces_its_own_output(composed):
    from mllm.compose import compose

    parts, out, folder = composed
    assert compose(parts / "base", parts / "audio", out, dtype="bfloat16") == folder
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_compose_refuses_bad_paths_before_torch(tmp_path, tiny_dir):
    code = (
        "import sys\n"
        "from mllm.compose import compose\n"
        "try:\n"
        f"    compose({str(tmp_path / 'missing')!r}, {str(tiny_dir / 'audio')!r}, {str(tmp_path / 'out')!r})\n"
        "except FileNotFoundError as exc:\n"
        "    print(exc)\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "base model not found" in result.stdout and not (tmp_path / "out").exists()


def test_compose_refuses_an_output_inside_an_input(tiny_dir):
    from mllm.compose import compose
    from mllm.outputs import OutputRefusedError

    with pytest.raises(OutputRefusedError, match="inside the input"):
        compose(tiny_dir / "base", tiny_dir / "audio", tiny_dir / "base" / "composed")
    with pytest.raises(ValueError, match="label space"):
        compose(tiny_dir / "base", tiny_dir / "audio", tiny_dir.parent / "x", label_space="nope")


# ---------------------------------------------------------------------------------------------------------------
# train/memory.py


@pytest.mark.parametrize("parts", ["tiny_dir", "tiny_llava_onevision_dir", "tiny_qwen2_5_vl_dir", "tiny_qwen3_vl_dir"])
def test_meta_count_equals_the_real_model(parts, request):
    from peft import get_peft_model

    from mllm.export import language_model_lora_config
    from mllm.model import EmoReasonForConditionalGeneration
    from train.memory import count_parameters

    folder = request.getfixturevalue(parts) / "emoreason"
    model = EmoReasonForConditionalGeneration.from_pretrained(str(folder))
    counts = count_parameters(model.config, lora_r=4)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.new_modules == sum(p.numel() for p in model.new_module_parameters())
    peft_model = get_peft_model(model, language_model_lora_config(model, r=4, alpha=8))
    assert counts.lora == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_memory_table_prints(capsys):
    from train.memory import main

    assert main(["--breakdown"]) == 0
    out = capsys.readouterr().out
    assert (
        out.count("| sft_") == 4 and out.count("| grpo_") == 4
    )  # InternVL3-1B, LLaVA-OV-0.5B, Qwen2.5-VL-7B, Qwen3-VL-8B
    assert "estimate" in out.lower() and "8 GPUs ZeRO-3" in out and "GiB" in out


def test_memory_estimate_shards_as_zero_does():
    from train.memory import Counts, Shape, Workload, estimate

    shape = Shape(896, 4864, 24, 128, 1024, 4096, 1025, 256, 100_000_000)
    counts = Counts(total=1_000_000_000, frozen=980_000_000, lora=10_000_000, new_modules=10_000_000, shape=shape)
    work = Workload(True, 8, 16, True, False, True, frames=8, audio_tokens=32, text_tokens=150, completion_tokens=384)
    work.generation_rows = 16
    one, z2, z3 = estimate(counts, work), estimate(counts, work, 8, 2), estimate(counts, work, 8, 3)
    assert z2["trainable_states"] == pytest.approx(one["trainable_states"] / 8)
    assert z3["weights"] == pytest.approx(one["weights"] / 8)
    assert z3["generation"] > one["generation"]  # generation gathers the whole model under ZeRO-3
    assert one["activations"] > 0 and one["peak"] > one["weights"] + one["trainable_states"]


def test_memory_estimate_of_colocated_vllm_rollouts():
    from dataclasses import replace

    from train.memory import GIB, Counts, Shape, Workload, estimate

    shape = Shape(896, 4864, 24, 128, 1024, 4096, 1025, 256, 100_000_000, served=500_000_000)
    counts = Counts(total=1_000_000_000, frozen=980_000_000, lora=10_000_000, new_modules=10_000_000, shape=shape)
    work = Workload(True, 8, 16, True, False, True, frames=8, audio_tokens=32, text_tokens=150, completion_tokens=384,
                    generation_rows=16)  # fmt: skip
    plain, colocated = estimate(counts, work), estimate(counts, replace(work, use_vllm=True))
    assert plain["vllm"] == 0
    # vLLM holds its own bf16 weights, the KV cache (no longer the trainer's) and the LoRA, plus its overhead
    kv = 16 * (8 * 256 + 32 + 150 + 384) * 24 * 2 * 128 * 2
    assert colocated["vllm"] == pytest.approx(2 * 500_000_000 + kv + 4 * 10_000_000 + 2 * GIB)
    assert colocated["generation"] < plain["generation"] and colocated["peak"] > plain["peak"]
