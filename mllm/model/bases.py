"""Base MLLM adapters, in a registry keyed by the base config's `model_type` (never by a path substring).

An adapter says how to build or load the base, how it turns pixels into visual tokens, where its text embeddings
and language model are, and how that language model is exported as a plain causal LM for vLLM.

Only bases whose language model uses ordinary 1-D positions and causal attention can be served through
`prompt_embeds` (ARCHITECTURE.md, decision 2); the others are refused with the reason.
"""

from __future__ import annotations

import torch
from torch import nn

# Families that cannot be served exactly through vLLM's prompt_embeds, and why.
REFUSED: dict[str, str] = {
    "qwen2_5_vl": "Qwen2.5-VL uses M-RoPE (3-D rotary positions over time, height and width); a language model fed "
    "prompt_embeds in vLLM gets 1-D positions, so served outputs would differ from training",
    "qwen2_vl": "Qwen2-VL uses M-RoPE (3-D rotary positions); prompt_embeds serving gives 1-D positions",
    "qwen3_vl": "Qwen3-VL uses interleaved M-RoPE (3-D rotary positions); prompt_embeds serving gives 1-D positions",
    "qwen3_vl_moe": "Qwen3-VL-MoE uses interleaved M-RoPE (3-D rotary positions); prompt_embeds gives 1-D positions",
    "gemma3": "Gemma 3 attends bidirectionally among image tokens; vLLM's causal language model over prompt_embeds "
    "cannot reproduce that mask",
}


class InternVLAdapter:
    """InternVL-hf (`InternVLForConditionalGeneration`): InternViT + pixel-shuffle MLP projector + Qwen2/Llama LM."""

    model_type = "internvl"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Where the decoder lives in the base, and what the exported causal LM calls it.
    language_model_prefix = "model.language_model."
    exported_prefix = "model."

    def config_from_dict(self, config: dict):
        from transformers import InternVLConfig

        return InternVLConfig(**config)

    def build(self, config: dict) -> nn.Module:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration(self.config_from_dict(config))

    def load(self, name_or_path: str, dtype=None) -> nn.Module:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)

    def text_config(self, base: nn.Module):
        return base.config.text_config

    def image_size(self, config) -> int:
        """Side of the square image the vision tower takes, from the base's config."""
        size = config.vision_config.image_size
        return int(size[0] if isinstance(size, list | tuple) else size)

    def tokens_per_image(self, config) -> int:
        """Visual tokens one image becomes: patches per side squared, shrunk by the pixel shuffle."""
        patch = config.vision_config.patch_size
        patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
        return int((self.image_size(config) // patch) ** 2 * config.downsample_ratio**2)

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_images, 3, S, S) -> (num_images, tokens_per_image, lm_hidden)."""
        out = base.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=base.config.vision_feature_layer,
            vision_feature_select_strategy=base.config.vision_feature_select_strategy,
        )
        return out.pooler_output

    def projector(self, base: nn.Module) -> nn.Module:
        return base.model.multi_modal_projector

    def input_embeddings(self, base: nn.Module) -> nn.Embedding:
        return base.get_input_embeddings()

    def language_model_state_dict(self, base: nn.Module) -> dict[str, torch.Tensor]:
        """The decoder and LM head under the names of a standalone `*ForCausalLM`."""
        state = {self.exported_prefix + k: v for k, v in base.model.language_model.state_dict().items()}
        state["lm_head.weight"] = base.lm_head.weight
        return state


BASE_ADAPTERS: dict[str, type] = {"internvl": InternVLAdapter}


def get_adapter(model_type: str):
    if model_type in REFUSED:
        raise ValueError(f"base model type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in BASE_ADAPTERS:
        raise ValueError(
            f"unknown base model type {model_type!r}; supported: {sorted(BASE_ADAPTERS)} "
            f"(refused, with reasons: {sorted(REFUSED)})"
        )
    return BASE_ADAPTERS[model_type]()
