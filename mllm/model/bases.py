"""Base MLLM adapters, in a registry keyed by the base config's `model_type` (never by a path substring).

An adapter says how to build or load the base, how it turns pixels into visual tokens, where its text embeddings
and language model are, and how that language model is exported as a plain causal LM for vLLM.

Only bases whose language model uses ordinary 1-D positions and causal attention can be served through
`prompt_embeds` (ARCHITECTURE.md, decision 2); the others are refused with the reason.

Every image and video frame is one fixed-size tile (the base's `image_size`): the processor gives one aligned face
crop (or the whole frame) per image, so multi-tile schemes (InternVL's dynamic crops, LLaVA-OneVision's anyres grid)
are not used, and every image becomes the same number of visual tokens, a square grid that face attention can
relate to landmark positions.
"""

from __future__ import annotations

import math

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


def _side(value) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


class _HFVisionLanguageAdapter:
    """What the transformers-native MLLMs share: `base.model.{vision_tower, multi_modal_projector, language_model}`
    and `base.lm_head`. Subclasses name their classes and say how pixels become visual tokens."""

    model_type = ""
    config_class = ""  # transformers class names, imported when needed
    model_class = ""
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Where the decoder lives in the base, and what the exported causal LM calls it.
    language_model_prefix = "model.language_model."
    exported_prefix = "model."

    def _class(self, name: str):
        import transformers

        return getattr(transformers, name)

    def config_from_dict(self, config: dict):
        return self._class(self.config_class)(**config)

    def build(self, config: dict) -> nn.Module:
        return self._class(self.model_class)(self.config_from_dict(config))

    def load(self, name_or_path: str, dtype=None) -> nn.Module:
        return self._class(self.model_class).from_pretrained(name_or_path, dtype=dtype)

    def text_config(self, base: nn.Module):
        return base.config.text_config

    def image_size(self, config) -> int:
        """Side of the square image the vision tower takes, from the base's config."""
        return _side(config.vision_config.image_size)

    def tokens_per_image(self, config) -> int:
        raise NotImplementedError

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_images, 3, S, S) -> (num_images, tokens_per_image, lm_hidden)."""
        raise NotImplementedError

    def projector(self, base: nn.Module) -> nn.Module:
        return base.model.multi_modal_projector

    def input_embeddings(self, base: nn.Module) -> nn.Embedding:
        return base.get_input_embeddings()

    def language_model(self, base: nn.Module) -> nn.Module:
        """The decoder (no LM head): `forward(inputs_embeds=..., attention_mask=...)` gives `last_hidden_state`."""
        return base.model.language_model

    def language_model_state_dict(self, base: nn.Module) -> dict[str, torch.Tensor]:
        """The decoder and LM head under the names of a standalone `*ForCausalLM` (the head written out even when
        the base ties it to the embeddings)."""
        state = {self.exported_prefix + k: v for k, v in base.model.language_model.state_dict().items()}
        state["lm_head.weight"] = base.lm_head.weight
        return state


class InternVLAdapter(_HFVisionLanguageAdapter):
    """InternVL-hf (`InternVLForConditionalGeneration`): InternViT + pixel-shuffle MLP projector + Qwen2/Llama LM.
    One 448 px tile per image (no dynamic crops): 256 visual tokens for the 1B/2B checkpoints."""

    model_type = "internvl"
    config_class = "InternVLConfig"
    model_class = "InternVLForConditionalGeneration"

    def tokens_per_image(self, config) -> int:
        """Visual tokens one image becomes: patches per side squared, shrunk by the pixel shuffle."""
        patch = _side(config.vision_config.patch_size)
        return int((self.image_size(config) // patch) ** 2 * config.downsample_ratio**2)

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        out = base.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=base.config.vision_feature_layer,
            vision_feature_select_strategy=base.config.vision_feature_select_strategy,
        )
        return out.pooler_output


class LlavaOnevisionAdapter(_HFVisionLanguageAdapter):
    """LLaVA-OneVision-hf (`LlavaOnevisionForConditionalGeneration`, e.g. `llava-hf/llava-onevision-qwen2-0.5b-ov-hf`):
    SigLIP + 2-layer MLP projector + Qwen2 LM (1-D positions, causal: served by vLLM as `Qwen2ForCausalLM`).

    Every image and frame takes OneVision's own video-frame path, as one 384 px tile: SigLIP's selected layer, the
    base's projector, then its 2x2 bilinear pooling (`apply_pooling`): 27x27 patches -> 14x14 = 196 tokens. Not
    used: the anyres grid of extra tiles for single images, and `image_newline` (OneVision appends one after a
    whole video; EmoReason frames are delimited by text and `<img>`/`</img>` instead)."""

    model_type = "llava_onevision"
    config_class = "LlavaOnevisionConfig"
    model_class = "LlavaOnevisionForConditionalGeneration"

    def _grid_side(self, config) -> int:
        if config.vision_feature_select_strategy != "full":
            raise ValueError(
                f"LLaVA-OneVision with vision_feature_select_strategy={config.vision_feature_select_strategy!r} is "
                "not supported: its frame pooling needs the full patch grid ('full')"
            )
        return self.image_size(config) // _side(config.vision_config.patch_size)

    def tokens_per_image(self, config) -> int:
        """Patches per side, halved (rounded up) by the 2x2 pooling, squared."""
        return math.ceil(self._grid_side(config) / 2) ** 2

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        self._grid_side(base.config)
        out = base.model.get_video_features(
            pixel_values_videos=pixel_values[:, None],  # each image a one-frame video: (N, 1, 3, S, S)
            vision_feature_layer=base.config.vision_feature_layer,
            vision_feature_select_strategy=base.config.vision_feature_select_strategy,
        )
        return out.pooler_output[:, :-1]  # drop the image_newline appended after each "video"


BASE_ADAPTERS: dict[str, type] = {"internvl": InternVLAdapter, "llava_onevision": LlavaOnevisionAdapter}


def get_adapter(model_type: str):
    if model_type in REFUSED:
        raise ValueError(f"base model type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in BASE_ADAPTERS:
        raise ValueError(
            f"unknown base model type {model_type!r}; supported: {sorted(BASE_ADAPTERS)} "
            f"(refused, with reasons: {sorted(REFUSED)})"
        )
    return BASE_ADAPTERS[model_type]()
