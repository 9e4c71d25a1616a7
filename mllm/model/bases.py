"""Base MLLM adapters, in a registry keyed by the base config's `model_type` (never by a path substring).

An adapter says how to build or load the base, how it turns pixels into visual tokens, where its text embeddings
and language model are, and how that language model is exported as a plain causal LM for vLLM.

Bases whose language model uses ordinary 1-D positions and causal attention are served through `prompt_embeds`
(ARCHITECTURE.md, decision 2). The Qwen-VL bases use M-RoPE (3-D positions over time, height and width, computed
from each image's grid): their adapters give the positions (`position_ids`) from the base's own `get_rope_index`, and
they are served as the base's own model fed our visual and audio embeddings as image items with their grids, so vLLM
computes the same positions. Other families are refused with the reason.

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
    "qwen2_vl": "Qwen2-VL uses M-RoPE (3-D rotary positions); prompt_embeds serving gives 1-D positions",
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
    # How the processor writes one image: start, one context token per visual token, end (our own tokens, added to
    # the base's tokenizer; bases with their own image delimiters name theirs).
    image_tokens = ("<img>", "<IMG_CONTEXT>", "</img>")
    # Positions: "1d" (the language model's ordinary ones) or "mrope" (3-D, from the grids; `position_ids`).
    positions = "1d"
    # Why the base is not served through vLLM (None: it is).
    serving_refused = None

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

    def image_size(self, config, image_processor=None) -> int:
        """Side of the square image the vision tower takes, from the base's config."""
        return _side(config.vision_config.image_size)

    def tokens_per_image(self, config, image_size: int | None = None) -> int:
        raise NotImplementedError

    def position_ids(self, base: nn.Module, input_ids, attention_mask, image_token_id, audio_token_id):
        """The language model's position ids for a batch, or None where its own 1-D positions are right."""
        return None

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_images, 3, S, S) -> (num_images, tokens_per_image, lm_hidden)."""
        raise NotImplementedError

    def decoder_inputs(self, input_ids, visual, extras) -> dict:
        """What the base's own forward takes beside `inputs_embeds` for the media: nothing (we write the visual
        tokens into the embeddings); Qwen3-VL's adapter gives its deepstack features."""
        return {}

    def visual_features(self, base: nn.Module, pixel_values: torch.Tensor):
        """(visual tokens as `image_features` gives them, features the language model takes beside them or None):
        Qwen3-VL's deepstack features, (num_images, tokens_per_image, layers * lm_hidden), which it adds to the
        hidden states of its first layers at the visual positions."""
        return self.image_features(base, pixel_values), None

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

    def tokens_per_image(self, config, image_size: int | None = None) -> int:
        """Visual tokens one image becomes: patches per side squared, shrunk by the pixel shuffle."""
        patch = _side(config.vision_config.patch_size)
        return int(((image_size or self.image_size(config)) // patch) ** 2 * config.downsample_ratio**2)

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

    def tokens_per_image(self, config, image_size: int | None = None) -> int:
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


class Qwen2_5_VLAdapter(_HFVisionLanguageAdapter):
    """Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, e.g. `Qwen/Qwen2.5-VL-7B-Instruct`): a ViT with 2-D rotary
    positions and window attention over 14 px patches, whose merger (the projector) joins 2x2 patches into one token
    of the language model's width; a Qwen2 language model with M-RoPE.

    Every image and frame is one square of `image_size` px (the face crop): a (1, S/14, S/14) grid, (S/28)^2 visual
    tokens in row-major order over the merged grid, so face attention relates each to its landmarks. S is 448 (256
    tokens), or less where the base's image processor caps `max_pixels` lower. Images are written as the base writes
    them, `<|vision_start|>` + one `<|image_pad|>` per token + `<|vision_end|>`.

    Positions: each image is an item with grid (1, S/14, S/14); each audio clip of n tokens is an item with grid
    (1, 2, 2n), a strip one merged row high, so its tokens advance the width axis as a line of patches would. The
    base's own `get_rope_index` gives the 3-D positions of training and `generate`; vLLM computes the same from the
    same grids (`tests/serve/test_qwen_parity.py`)."""

    model_type = "qwen2_5_vl"
    config_class = "Qwen2_5_VLConfig"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    image_tokens = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    positions = "mrope"
    exported_prefix = "model.language_model."  # served as the base itself (mllm.export.export_multimodal_base)
    face_side = 448  # px of a face crop: 16x16 = 256 visual tokens

    def _factor(self, config) -> int:
        return int(config.vision_config.patch_size) * int(config.vision_config.spatial_merge_size)

    def image_size(self, config, image_processor=None) -> int:
        """448 px, or the largest square the image processor's pixel budget (`max_pixels`) allows, in whole merged
        patches (28 px)."""
        factor = self._factor(config)
        side = self.face_side
        size = getattr(image_processor, "size", None) or {}
        budget = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
        budget = budget or getattr(image_processor, "max_pixels", None)
        if budget:
            side = min(side, int(math.isqrt(int(budget))))
        return max(factor, side // factor * factor)

    def tokens_per_image(self, config, image_size: int | None = None) -> int:
        return ((image_size or self.image_size(config)) // self._factor(config)) ** 2

    def projector(self, base: nn.Module) -> nn.Module:
        return base.model.visual.merger

    def patches(self, config, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) normalised pixels -> the vision tower's input, as the base's image processor lays it out:
        (N * (S/14)^2, 3 * temporal_patch * 14 * 14) patches, each image repeated over the temporal patch, ordered by
        2x2 merge window; and the grids, (N, 3) rows of (1, S/14, S/14)."""
        vision = config.vision_config
        patch, merge, temporal = (
            int(vision.patch_size),
            int(vision.spatial_merge_size),
            int(vision.temporal_patch_size),
        )
        n, channels, height, width = pixel_values.shape
        gh, gw = height // patch, width // patch
        x = pixel_values[:, None].expand(n, temporal, channels, height, width)
        x = x.reshape(n, temporal, channels, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # n, gh/m, gw/m, m, m, c, t, p, p
        flat = x.reshape(n * gh * gw, channels * temporal * patch * patch)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=pixel_values.device)
        return flat, grid

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        flat, grid = self.patches(base.config, pixel_values)
        out = base.model.get_image_features(pixel_values=flat, image_grid_thw=grid, return_dict=True)
        return torch.stack(list(out.pooler_output))

    def item_grids(self, config, input_ids_row: torch.Tensor, image_token_id: int, audio_token_id: int):
        """The (t, h, w) grid of every media item in one sequence, in order: each run of image tokens is an image,
        each run of audio tokens an audio strip."""
        merge = int(config.vision_config.spatial_merge_size)
        is_media = (input_ids_row == image_token_id) | (input_ids_row == audio_token_id)
        grids = []
        ids = input_ids_row.tolist()
        flags = is_media.tolist()
        i = 0
        while i < len(ids):
            if not flags[i]:
                i += 1
                continue
            j = i
            while j < len(ids) and flags[j] and ids[j] == ids[i]:
                j += 1
            count = j - i
            if ids[i] == image_token_id:
                side = math.isqrt(count)
                if side * side != count:
                    raise ValueError(f"an image of {count} tokens is not a square grid")
                grids.append((1, side * merge, side * merge))
            else:
                grids.append((1, merge, count * merge))
            i = j
        return grids

    def vllm_prompt(self, config, input_ids: torch.Tensor, embeds: torch.Tensor, image_token_id, audio_token_id,
                    extras=None):  # fmt: skip
        """One sequence (no padding) and its embeddings as vLLM's prompt for the base itself: the token ids with each
        media item's run of tokens (image or audio) shortened to one `<|image_pad|>`, and every item's embeddings as
        an image item with its grid (`multi_modal_data` with `image_embeds` / `image_grid_thw`, vLLM's
        `enable_mm_embeds`). vLLM expands each placeholder back to the grid's count and computes the positions from
        the grids, as `position_ids` does here."""
        ids = input_ids.tolist()
        grids = self.item_grids(config, input_ids, image_token_id, audio_token_id)
        prompt, values, i = [], [], 0
        while i < len(ids):
            if ids[i] not in (image_token_id, audio_token_id):
                prompt.append(ids[i])
                i += 1
                continue
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            prompt.append(image_token_id)
            values.append(embeds[i:j])
            i = j
        if not grids:
            return {"prompt_token_ids": prompt}
        image = {"image_embeds": torch.cat(values), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}
        return {"prompt_token_ids": prompt, "multi_modal_data": {"image": image}}

    def position_ids(self, base: nn.Module, input_ids, attention_mask, image_token_id, audio_token_id):
        """(3, B, L) M-RoPE positions from the base's own `get_rope_index`, media items as `item_grids` says."""
        is_media = (input_ids == image_token_id) | (input_ids == audio_token_id)
        if not bool(is_media.any()):
            return None
        if attention_mask is None:
            rows = list(input_ids)
        else:
            rows = [r[m.bool()] for r, m in zip(input_ids, attention_mask, strict=True)]
        grids = [g for row in rows for g in self.item_grids(base.config, row, image_token_id, audio_token_id)]
        positions, _ = base.model.get_rope_index(
            input_ids,
            mm_token_type_ids=is_media.int(),
            image_grid_thw=torch.tensor(grids, dtype=torch.long, device=input_ids.device),
            attention_mask=attention_mask,
        )
        return positions


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Qwen3-VL (`Qwen3VLForConditionalGeneration`, e.g. `Qwen/Qwen3-VL-8B-Instruct`): a ViT over 16 px patches with
    learned position embeddings, its 2x2 merger (the projector), and deepstack: mergers over three inner layers of
    the ViT whose features the language model adds to the hidden states of its first three layers at the visual
    positions; a Qwen3 language model with interleaved M-RoPE.

    Face crops of 448 px: a (1, 28, 28) grid, 14x14 = 196 visual tokens. Face attention applies to the main visual
    tokens; the deepstack features pass through unchanged (their mergers stay frozen), and audio strips carry none
    (zeros: adding nothing, as in the base for text). Positions as for Qwen2.5-VL, from the base's own
    `get_rope_index`; served as the base itself with each item's main and deepstack features joined along the
    hidden dimension (hidden x (1 + layers)), as vLLM takes Qwen3-VL's image embeddings."""

    model_type = "qwen3_vl"
    config_class = "Qwen3VLConfig"
    model_class = "Qwen3VLForConditionalGeneration"

    def _levels(self, config) -> int:
        return len(config.vision_config.deepstack_visual_indexes)

    def visual_features(self, base: nn.Module, pixel_values: torch.Tensor):
        flat, grid = self.patches(base.config, pixel_values)
        out = base.model.get_image_features(pixel_values=flat, image_grid_thw=grid, return_dict=True)
        main = torch.stack(list(out.pooler_output))
        deep = torch.cat([torch.stack(list(level)) for level in out.deepstack_features], dim=-1)
        return main, deep

    def image_features(self, base: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_features(base, pixel_values)[0]

    def decoder_inputs(self, input_ids, visual, extras) -> dict:
        """The face-attended visual tokens and the deepstack features as the base's precomputed encoder outputs
        (`mm_encoder_outputs`): the base writes them at its image tokens and adds the deepstack features in its
        first layers, as it does for its own tower's."""
        if visual is None:
            return {}
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        hidden = visual.shape[-1]
        levels = extras.shape[-1] // hidden
        deepstack = [tuple(extras[..., k * hidden : (k + 1) * hidden]) for k in range(levels)]
        outputs = BaseModelOutputWithDeepstackFeatures(pooler_output=tuple(visual), deepstack_features=deepstack)
        return {"mm_encoder_outputs": {"image": outputs}}

    def vllm_prompt(self, config, input_ids, embeds, image_token_id, audio_token_id, extras=None):
        """As for Qwen2.5-VL, each item's embeddings followed by its deepstack features (zeros for audio strips)."""
        levels = self._levels(config)
        joined = embeds.new_zeros(embeds.shape[0], embeds.shape[1] * (1 + levels))
        joined[:, : embeds.shape[1]] = embeds
        if extras is not None:
            joined[input_ids == image_token_id, embeds.shape[1] :] = extras.to(embeds.dtype)
        return super().vllm_prompt(config, input_ids, joined, image_token_id, audio_token_id)


class Qwen3_5Adapter(Qwen3VLAdapter):
    """Qwen3.5 (`Qwen3_5ForConditionalGeneration`): Qwen3-VL's kind of ViT (16 px patches, 2x2 merger, no deepstack)
    and a hybrid language model, Gated DeltaNet linear-attention layers between full-attention ones, with interleaved
    M-RoPE on a part of each head. Images, audio strips and positions as for Qwen3-VL; LoRA goes on the
    full-attention layers and every MLP (the linear-attention layers keep their weights). Not served
    (`serving_refused`): vLLM's CPU build runs its linear attention in bfloat16 only ("CPU GDN attention requires
    BF16"), where exact parity with training does not hold."""

    model_type = "qwen3_5"
    config_class = "Qwen3_5Config"
    model_class = "Qwen3_5ForConditionalGeneration"
    serving_refused = (
        "Qwen3.5 trains and generates here (transformers), but is not served: vLLM's CPU build runs its linear "
        "attention in bfloat16 only, and there its greedy tokens part from transformers' after 2 of 12 on the tiny "
        "checkpoint (measured), so served answers would not be the trained model's"
    )

    def _levels(self, config) -> int:
        return 0

    def visual_features(self, base: nn.Module, pixel_values: torch.Tensor):
        flat, grid = self.patches(base.config, pixel_values)
        out = base.model.get_image_features(pixel_values=flat, image_grid_thw=grid, return_dict=True)
        return torch.stack(list(out.pooler_output)), None

    def decoder_inputs(self, input_ids, visual, extras) -> dict:
        return {}


BASE_ADAPTERS: dict[str, type] = {
    "internvl": InternVLAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_5": Qwen3_5Adapter,
}


def get_adapter(model_type: str):
    if model_type in REFUSED:
        raise ValueError(f"base model type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in BASE_ADAPTERS:
        raise ValueError(
            f"unknown base model type {model_type!r}; supported: {sorted(BASE_ADAPTERS)} "
            f"(refused, with reasons: {sorted(REFUSED)})"
        )
    return BASE_ADAPTERS[model_type]()


def image_processor_class(name: str):
    """The base's image processor class: the torchvision one where torchvision imports, else its PIL twin (which
    transformers would fall back to anyway, warning each time; the CPU set-up removes torchvision on purpose)."""
    import importlib.util

    import transformers

    has_torchvision = importlib.util.find_spec("torchvision") is not None
    return getattr(transformers, name if has_torchvision else f"{name}Pil")
