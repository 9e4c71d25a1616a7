"""Estimated peak GPU memory per GPU for the GPU recipes, from parameter counts. An estimate, not a measurement.

    python -m train.memory                                   # every GPU recipe in train/recipes/
    python -m train.memory --recipe train/recipes/sft_internvl3_1b.yaml --frames 16
    python -m train.memory --recipe my.yaml --arch llava-onevision-0.5b

The composed model (base MLLM + wav2vec2-base + face attention + audio projector) is built on the meta device from
the published architectures written below (no weights, no hub), and its parameters are counted: frozen (vision
tower, audio encoder, language model), LoRA (rank `lora_r` on q, k, v, o, gate, up, down of every language-model
layer) and the new modules (face attention, audio layer weights and projector, the base's vision projector).

Formula, in bytes per GPU (N GPUs; F frozen, T trainable parameters; b = per_device_train_batch_size; S tokens per
sample = frames x tokens_per_image + audio tokens + text tokens; h, i, L: the language model's hidden size,
MLP width and layers; hv, iv, p: the vision tower's hidden size, MLP width and tokens per image):

    frozen weights        2 F                     (bf16; ZeRO-3: / N)
    trainable states      4 T + 4 T + 8 T         (fp32 weights, grads, Adam's two moments; ZeRO-2 shards grads and
                                                   Adam over N, ZeRO-3 also the weights)
    ZeRO-3 gather         2 x 2 x largest tensor  (the current and the prefetched gathered parameters)
    activations           b S 2 h L               (gradient checkpointing: each layer's input, bf16)
                        + b S 2 (20 h + 8 i)      (one layer recomputed in the backward, with its gradients;
                                                   without checkpointing this term is paid for every layer)
                        + b frames p 2 (6 hv + 2 iv)                   (frozen vision tower: one layer live)
                        + b frames tokens_per_image 2 (8 h)            (face attention, trained)
    GRPO generation       R (P + C) L 2 kv d 2    (KV cache: R = b x steps_per_generation rows generated at once,
                                                   P prompt and C = max_completion_length tokens; kv heads x head dim)
                        + R P 2 (6 h + 3 i)       (prefill, no grad: one layer live)
                        + R frames p 2 (6 hv + 2 iv)                   (the vision tower over every row's frames)
    peak                  (weights + states + max(training activations, GRPO generation)) x 1.10 + 1 GiB
                          (allocator fragmentation; CUDA context, cuBLAS and NCCL buffers)
    GRPO with use_vllm    generation in the trainer is only the encoders and the prompts' embeddings; vLLM,
                          colocated, adds 2 x its weights (the language model and head; Qwen-VL: the base) +
                          the same KV cache + the LoRA + 2 GiB of its own (`vllm_gpu_memory_utilization` must
                          give it that share of the GPU: `vllm` in --breakdown)

Attention is SDPA (flash / memory-efficient kernels on GPU: no score matrices). The LM head never materialises full
logits (TRL's fused, tiled head), so no vocabulary term. GRPO's reference model is
the policy with its adapter disabled: no second copy. Under ZeRO-3, GRPO's generation gathers the whole model on every
GPU (`ds3_gather_for_generation`), so its generation phase counts unsharded bf16 weights.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RECIPES_DIR = Path(__file__).parent / "recipes"
GIB = 1024**3
FRAGMENTATION = 1.10
FIXED_OVERHEAD = 1 * GIB
VLLM_OVERHEAD = 2 * GIB  # vLLM's own: CUDA graphs, sampler and activation buffers, its CUDA context


def qwen2_05b(vocab_size: int, tie_word_embeddings: bool) -> dict:
    """Qwen2-0.5B's text config, the language model of both GPU bases; they differ in vocabulary and tying."""
    return {
        "model_type": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_word_embeddings,
    }


def internvl3_1b() -> dict:
    """OpenGVLab/InternVL3-1B-hf: InternViT-300M-448px-V2.5 + pixel-shuffle MLP projector + Qwen2.5-0.5B (its head
    untied). `from_base` adds the 3 audio placeholders to its tokenizer (the image ones are there): vocabulary
    151674 -> 151677."""
    from transformers import InternVLConfig

    return InternVLConfig(
        vision_config={
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "patch_size": [14, 14],
            "image_size": [448, 448],
            "use_qk_norm": False,
            "use_mean_pooling": True,
            "norm_type": "layer_norm",
        },
        text_config=qwen2_05b(vocab_size=151674 + 3, tie_word_embeddings=False),
        downsample_ratio=0.5,
        image_seq_length=256,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    ).to_dict()


def llava_onevision_05b() -> dict:
    """llava-hf/llava-onevision-qwen2-0.5b-ov-hf: SigLIP so400m-patch14-384 (no pooling head) + 2-layer MLP projector +
    Qwen2-0.5B (tied embeddings). `from_base` adds `<img>`, `</img>`, `<IMG_CONTEXT>` and the 3 audio placeholders."""
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 1152,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "intermediate_size": 4304,
            "image_size": 384,
            "patch_size": 14,
            "vision_use_head": False,
        },
        text_config=qwen2_05b(vocab_size=151647 + 6, tie_word_embeddings=True),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=True,
    ).to_dict()


def qwen2_5_vl_7b() -> dict:
    """Qwen/Qwen2.5-VL-7B-Instruct: a 32-layer ViT (1280 wide, 14 px patches, 2x2 merger to 3584) + a 28-layer Qwen2
    language model with M-RoPE (3584 wide, GQA with 4 KV heads, head untied). Face crops of 448 px: 256 tokens.
    `from_base` adds the 3 audio placeholders to its tokenizer; they fit the 152064-row embedding table."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
        },
        text_config={
            "model_type": "qwen2_5_vl_text",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        tie_word_embeddings=False,
    ).to_dict()


def qwen3_vl_8b() -> dict:
    """Qwen/Qwen3-VL-8B-Instruct: a 27-layer ViT (1152 wide, 16 px patches, 2x2 merger to 4096, deepstack mergers after
    layers 8, 16 and 24) + a 36-layer Qwen3 language model with interleaved M-RoPE (4096 wide, GQA with 8 KV heads,
    head untied). Face crops of 448 px: 196 tokens. The 3 audio placeholders fit its 151936-row embedding table."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        vision_config={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "out_hidden_size": 4096,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        text_config={
            "model_type": "qwen3_vl_text",
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        tie_word_embeddings=False,
    ).to_dict()


def wav2vec2_base() -> dict:
    """facebook/wav2vec2-base: 7-layer conv feature encoder (512 channels, group norm), 12 layers of 768 (MLP 3072)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, conv_dim=(512,) * 7
    ).to_dict()


# Architecture name -> the base's config; every one is composed with wav2vec2-base.
ARCHITECTURES = {
    "internvl3-1b": internvl3_1b,
    "llava-onevision-0.5b": llava_onevision_05b,
    "qwen2.5-vl-7b": qwen2_5_vl_7b,
    "qwen3-vl-8b": qwen3_vl_8b,
}
# The GPU recipes and the architecture each is for (the model folder a recipe names cannot be read here).
GPU_RECIPES = {
    "sft_internvl3_1b.yaml": "internvl3-1b",
    "grpo_internvl3_1b.yaml": "internvl3-1b",
    "sft_llava_onevision_0.5b.yaml": "llava-onevision-0.5b",
    "grpo_llava_onevision_0.5b.yaml": "llava-onevision-0.5b",
    "sft_qwen2_5_vl_7b.yaml": "qwen2.5-vl-7b",
    "grpo_qwen2_5_vl_7b.yaml": "qwen2.5-vl-7b",
    "sft_qwen3_vl_8b.yaml": "qwen3-vl-8b",
    "grpo_qwen3_vl_8b.yaml": "qwen3-vl-8b",
}


def emoreason_config(arch: str):
    from mllm.config import EmoReasonConfig

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {sorted(ARCHITECTURES)}")
    # Qwen2 tokenizer ids of <|im_end|> and <|endoftext|>, as from_base would record them.
    return EmoReasonConfig(
        base_config=ARCHITECTURES[arch](), audio_config=wav2vec2_base(), eos_token_id=151645, pad_token_id=151643
    )


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts


@dataclass
class Shape:
    """What the activation terms need from the architecture."""

    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # key/value heads x head dim
    vision_hidden: int
    vision_intermediate: int
    patches: int  # vision tokens per image, inside the tower
    tokens_per_image: int  # visual tokens per image in the language model
    largest_tensor: int  # parameters of the largest single tensor (ZeRO-3 gathers one at a time)
    served: int = 0  # parameters vLLM loads for rollouts: the language model and head (Qwen-VL: the whole base)


@dataclass
class Counts:
    total: int
    frozen: int
    lora: int
    new_modules: int
    shape: Shape

    @property
    def trainable(self) -> int:
        return self.lora + self.new_modules


def lora_parameters(model, r: int) -> int:
    """Parameters of a rank-`r` LoRA on the modules `language_model_lora_config` targets: r x (in + out) each."""
    adapter = model.adapter
    pattern = re.compile(rf"layers\.\d+\.(self_attn|mlp)\.({'|'.join(adapter.lora_target_modules)})$")
    decoder = adapter.language_model(model.base)
    return sum(r * (m.in_features + m.out_features) for n, m in decoder.named_modules() if pattern.search(n))


def _served_parameters(model) -> int:
    """What vLLM loads for the rollouts (`mllm.export.export_language_model`): the language model and its head, or
    for the M-RoPE bases the base itself."""
    if model.adapter.positions == "mrope":
        return sum(p.numel() for p in model.base.parameters())
    decoder = sum(p.numel() for p in model.adapter.language_model(model.base).parameters())
    head = model.get_output_embeddings().weight
    tied = head is model.get_input_embeddings().weight
    return decoder + head.numel() * (2 if tied else 1)  # the export writes the head out even when tied


def count_parameters(config, lora_r: int = 16) -> Counts:
    """Build the composed model of `config` (an EmoReasonConfig) on the meta device and count its parameters."""
    import torch

    from mllm.model import EmoReasonForConditionalGeneration

    with torch.device("meta"):
        model = EmoReasonForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for p in model.new_module_parameters())
    base_config = model.adapter.config_from_dict(config.base_config)
    text = model.adapter.text_config(model.base)
    vision = base_config.vision_config
    patch = vision.patch_size[0] if isinstance(vision.patch_size, list | tuple) else vision.patch_size
    grid = model.adapter.image_size(base_config) // patch
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    shape = Shape(
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        kv_dim=text.num_key_value_heads * head_dim,
        vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
        patches=grid * grid + (1 if base_config.model_type == "internvl" else 0),  # InternViT adds a CLS token
        tokens_per_image=model.adapter.tokens_per_image(base_config),
        largest_tensor=max(p.numel() for p in model.parameters()),
        served=_served_parameters(model),
    )
    return Counts(total=total, frozen=total - new, lora=lora_parameters(model, lora_r), new_modules=new, shape=shape)


# ---------------------------------------------------------------------------------------------------------------
# The estimate


@dataclass
class Workload:
    """One GPU's share of a step, from a recipe (and the media assumptions)."""

    grpo: bool
    micro_batch: int
    lora_r: int
    train_lora: bool
    train_new_modules: bool
    gradient_checkpointing: bool
    frames: int
    audio_tokens: int
    text_tokens: int  # SFT: prompt + target; GRPO: the prompt's text
    completion_tokens: int = 0  # GRPO: max_completion_length
    generation_rows: int = 0  # GRPO: rows generated at once on one GPU
    use_vllm: bool = False  # GRPO: rollouts in a vLLM engine colocated on each GPU


def workload_from_recipe(recipe: dict, frames: int, audio_tokens: int, text_tokens: int, prompt_tokens: int):
    grpo = any(key in recipe for key in ("num_generations", "rewards", "max_completion_length", "beta"))
    micro = int(recipe.get("per_device_train_batch_size", 8))
    steps_per_generation = recipe.get("steps_per_generation") or recipe.get("gradient_accumulation_steps", 1)
    new_lr = recipe.get("new_modules_lr")
    return Workload(
        grpo=grpo,
        micro_batch=micro,
        lora_r=int(recipe.get("lora_r", 16)),
        train_lora=recipe.get("stage", "sft") != "align",
        train_new_modules=bool(recipe.get("train_new_modules", False)) if grpo else new_lr != 0,
        gradient_checkpointing=bool(recipe.get("gradient_checkpointing", False)),
        frames=frames,
        audio_tokens=audio_tokens,
        text_tokens=prompt_tokens if grpo else text_tokens,
        completion_tokens=int(recipe.get("max_completion_length", 256)) if grpo else 0,
        generation_rows=micro * int(steps_per_generation) if grpo else 0,
        use_vllm=bool(recipe.get("use_vllm", False)) and grpo,
    )


def estimate(counts: Counts, work: Workload, gpus: int = 1, zero: int = 0) -> dict[str, float]:
    """Bytes per GPU by component, and "peak". `zero`: 0 (plain data parallel), 2 or 3 (DeepSpeed ZeRO stage)."""
    s = counts.shape
    trainable = (counts.lora if work.train_lora else 0) + (counts.new_modules if work.train_new_modules else 0)
    frozen = counts.total - trainable
    shard_states = gpus if zero >= 2 else 1
    shard_weights = gpus if zero == 3 else 1
    weights = 2 * frozen / shard_weights + 4 * trainable / shard_weights
    states = (4 + 8) * trainable / shard_states
    gather = 2 * 2 * s.largest_tensor if zero == 3 else 0

    media = work.frames * s.tokens_per_image + work.audio_tokens
    vision_per_image = 2 * s.patches * (6 * s.vision_hidden + 2 * s.vision_intermediate)
    tokens = media + work.text_tokens + work.completion_tokens
    layer = 2 * (20 * s.hidden + 8 * s.intermediate)
    stored = 2 * s.hidden * s.layers + layer if work.gradient_checkpointing else layer * s.layers
    activations = work.micro_batch * (
        tokens * stored + work.frames * (vision_per_image + 2 * 8 * s.hidden * s.tokens_per_image)
    )
    generation = vllm = 0.0
    if work.grpo:
        rows, prompt = work.generation_rows, media + work.text_tokens
        kv_cache = rows * (prompt + work.completion_tokens) * s.layers * 2 * s.kv_dim * 2
        prefill = rows * prompt * 2 * (6 * s.hidden + 3 * s.intermediate)
        encoders = rows * work.frames * vision_per_image + rows * prompt * s.hidden * 2  # + the prompts' embeddings
        if work.use_vllm:  # the trainer only encodes the prompts; vLLM holds its own weights, KV cache and LoRA
            generation = encoders
            vllm = 2 * s.served + kv_cache + 2 * 2 * counts.lora + VLLM_OVERHEAD
        else:
            generation = kv_cache + prefill + encoders
        if zero == 3 and not work.use_vllm:  # the whole model gathered for generation
            generation += 2 * counts.total - weights
    peak = (weights + states + gather + max(activations, generation)) * FRAGMENTATION + FIXED_OVERHEAD + vllm
    return {
        "weights": weights,
        "trainable_states": states,
        "zero3_gather": gather,
        "activations": activations,
        "generation": generation,
        "vllm": vllm,
        "peak": peak,
    }


SETUPS = [
    (1, 0, "1 GPU"),
    (2, 2, "2 GPUs ZeRO-2"),
    (8, 2, "8 GPUs ZeRO-2"),
    (2, 3, "2 GPUs ZeRO-3"),
    (8, 3, "8 GPUs ZeRO-3"),
]


def memory_table(rows: list[tuple[str, Counts, Workload]]) -> str:
    """Markdown: per recipe, parameters and the estimated peak GiB per GPU for each setup in SETUPS."""
    head = "| recipe (estimate) | params: frozen / trainable | tokens per sample | " + " | ".join(
        label for *_, label in SETUPS
    )
    lines = [head + " |", "|" + "---|" * (3 + len(SETUPS))]
    for name, counts, work in rows:
        trainable = (counts.lora if work.train_lora else 0) + (counts.new_modules if work.train_new_modules else 0)
        tokens = work.frames * counts.shape.tokens_per_image + work.audio_tokens + work.text_tokens
        tokens += work.completion_tokens
        peaks = [estimate(counts, work, gpus, zero)["peak"] / GIB for gpus, zero, _ in SETUPS]
        lines.append(
            f"| {name} | {(counts.total - trainable) / 1e6:.0f}M / {trainable / 1e6:.1f}M | {tokens} | "
            + " | ".join(f"~{p:.1f} GiB" for p in peaks)
            + " |"
        )
    return "\n".join(lines)


def breakdown(name: str, counts: Counts, work: Workload) -> str:
    parts = estimate(counts, work)
    return f"{name} (1 GPU, estimate): " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items())


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m train.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", nargs="*", default=None, help="recipe files (default: the GPU recipes)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture of a --recipe not listed here")
    parser.add_argument("--frames", type=int, default=None, help="images per sample (default: frames_per_clip)")
    parser.add_argument("--audio-tokens", type=int, default=None, help="default: max_audio_tokens")
    parser.add_argument("--text-tokens", type=int, default=400, help="SFT: prompt + target text tokens")
    parser.add_argument("--prompt-tokens", type=int, default=150, help="GRPO: the prompt's text tokens")
    parser.add_argument("--breakdown", action="store_true", help="also print each recipe's components")
    args = parser.parse_args(argv)

    paths = [Path(p) for p in args.recipe] if args.recipe else [RECIPES_DIR / name for name in GPU_RECIPES]
    rows, counted = [], {}
    for path in paths:
        arch = args.arch or GPU_RECIPES.get(path.name)
        if arch is None:
            parser.error(f"{path}: not a known GPU recipe; name its architecture with --arch")
        if not path.is_file():
            parser.error(f"{path}: recipe file not found")
        recipe = yaml.safe_load(path.read_text()) or {}
        config = emoreason_config(arch)
        work = workload_from_recipe(
            recipe,
            frames=args.frames or config.frames_per_clip,
            audio_tokens=config.max_audio_tokens if args.audio_tokens is None else args.audio_tokens,
            text_tokens=args.text_tokens,
            prompt_tokens=args.prompt_tokens,
        )
        key = (arch, work.lora_r)
        if key not in counted:
            counted[key] = count_parameters(config, work.lora_r)
        rows.append((path.name, counted[key], work))
    print(memory_table(rows))
    work = rows[0][2]
    print(
        f"\nEstimates (train/memory.py), not measurements: {work.frames} frames and {work.audio_tokens} audio tokens "
        f"per sample, {args.text_tokens} text tokens (SFT) / {args.prompt_tokens} prompt tokens (GRPO); bf16 weights, "
        "fp32 trainable states with Adam; peak x1.1 + 1 GiB."
    )
    if args.breakdown:
        print("\n" + "\n".join(breakdown(name, c, w) for name, c, w in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
