"""`EmoReasonForConditionalGeneration`: an open MLLM (`base`), face-region attention and a Wav2Vec2 audio branch,
meeting in one method, `build_inputs_embeds`, which training, reference generation and serving all call."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, Wav2Vec2Config, Wav2Vec2Model

from mllm.checkpoints import check_checkpoint, resolve_checkpoint
from mllm.config import EmoReasonConfig
from mllm.model.audio import AudioBranch
from mllm.model.bases import get_adapter
from mllm.model.face_attention import FaceRegionGuidedAttention


class EmoReasonForConditionalGeneration(PreTrainedModel):
    config_class = EmoReasonConfig
    base_model_prefix = "emoreason"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: EmoReasonConfig):
        super().__init__(config)
        if not config.base_config:
            raise ValueError("EmoReasonConfig.base_config is empty: build the model with from_base(base, audio)")
        self.adapter = get_adapter(config.base_config.get("model_type"))
        self.base = self.adapter.build(config.base_config)
        hidden = self.adapter.text_config(self.base).hidden_size
        self.face_attention = FaceRegionGuidedAttention(
            hidden,
            heads=config.face_heads,
            gate_init=config.face_gate_init,
            distance_mask=config.face_distance_mask,
            sigma=config.face_distance_sigma,
        )
        self.audio_branch = AudioBranch(
            Wav2Vec2Model(Wav2Vec2Config(**config.audio_config)), hidden, projector=config.audio_projector
        )
        self.post_init()
        # Generation runs the base's `generate` from embeddings; trainers (TRL) read and set these defaults here.
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)

    def _init_weights(self, module):
        # The base and the encoder initialise themselves (or are loaded); the new modules keep PyTorch's
        # defaults and the face gate its small start.
        pass

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, dtype=None, **kwargs):
        """Load a saved EmoReason checkpoint: a local folder (checked first: a missing folder or a missing, truncated
        or corrupt file fails at once, naming it) or an `org/name` hub id."""
        folder = resolve_checkpoint(
            pretrained_model_name_or_path, revision=kwargs.get("revision"), subfolder=kwargs.pop("subfolder", "")
        )
        check_checkpoint(folder)
        model = super().from_pretrained(str(folder), *args, dtype=dtype, **kwargs)
        # The parts are built inside __init__ by their own constructors, which ignore the requested dtype.
        if isinstance(dtype, torch.dtype) and model.dtype != dtype:
            model.to(dtype)
        return model

    # ------------------------------------------------------------------------------------------------------------
    # Construction from parts

    @classmethod
    def from_base(
        cls,
        base: str | Path,
        audio_encoder: str | Path,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
        **config_overrides,
    ) -> EmoReasonForConditionalGeneration:
        """Compose a new model from a base MLLM and a Wav2Vec2 checkpoint (hub ids or local paths): their
        pretrained weights are loaded, the face attention and audio projector start fresh."""
        from mllm.processor import prepare_tokenizer

        base = resolve_checkpoint(base, what="base model", download=False)
        audio_encoder = resolve_checkpoint(audio_encoder, what="audio encoder", download=False)
        base_type = AutoConfig.from_pretrained(str(base)).model_type
        adapter = get_adapter(base_type)
        tokenizer = prepare_tokenizer(str(base), image_tokens=adapter.image_tokens)
        base_model = adapter.load(str(base), dtype=dtype)
        if base_model.get_input_embeddings().num_embeddings < len(tokenizer):
            from transformers.utils import logging as hf_logging

            # The added rows start at the old rows' mean (transformers' default, wanted): its notice says only that.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                base_model.resize_token_embeddings(len(tokenizer))
            finally:
                hf_logging.set_verbosity(verbosity)
        encoder = Wav2Vec2Model.from_pretrained(str(audio_encoder), dtype=dtype)
        config = EmoReasonConfig(
            base_model=str(base),
            base_config=base_model.config.to_dict(),
            audio_encoder=str(audio_encoder),
            audio_config=encoder.config.to_dict(),
            image_token_id=tokenizer.convert_tokens_to_ids(
                config_overrides.setdefault("image_token", adapter.image_tokens[1])
            ),
            audio_token_id=tokenizer.convert_tokens_to_ids(config_overrides.get("audio_token", "<AUDIO_CONTEXT>")),
            eos_token_id=adapter.text_config(base_model).eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config_overrides,
        )
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(config)
        model.base.load_state_dict(base_model.state_dict())
        model.audio_branch.encoder.load_state_dict(encoder.state_dict())
        if dtype is not None:
            model.to(dtype)
        return model

    # ------------------------------------------------------------------------------------------------------------
    # Which parameters train

    def new_module_parameters(self):
        """The parameters EmoReason adds (trained in full): face attention, audio layer weights and projector,
        and the base's vision-to-text projector."""
        yield from self.face_attention.parameters()
        yield self.audio_branch.layer_weights
        yield from self.audio_branch.projector.parameters()
        yield from self.adapter.projector(self.base).parameters()

    def set_trainable_new_modules(self, trainable: bool = True) -> None:
        for p in self.new_module_parameters():
            p.requires_grad_(trainable)

    def train(self, mode: bool = True):
        """As torch's, except that with `frozen_encoders_in_eval` set, the frozen pretrained audio encoder stays in
        eval mode (no dropout) while the rest trains: GRPO scores the same tokens under the policy, the old policy,
        the reference and vLLM, and each must see the same audio."""
        super().train(mode)
        if mode and getattr(self, "frozen_encoders_in_eval", False):
            self.audio_branch.encoder.eval()
        return self

    def freeze_base(self) -> None:
        """Freeze everything, then unfreeze the new modules (LoRA, if any, is added on top by PEFT)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.set_trainable_new_modules(True)

    # ------------------------------------------------------------------------------------------------------------
    # The seam

    def get_input_embeddings(self) -> nn.Module:
        return self.adapter.input_embeddings(self.base)

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    @property
    def base_model(self) -> MediaBackbone:
        """The backbone without the LM head, building its inputs from the media through the seam.

        TRL's trainers (SFT loss, GRPO log-probabilities) run `model.base_model(**inputs).last_hidden_state` and
        apply `get_output_embeddings()` themselves (`trl.trainer.utils.add_fused_lm_head`); this makes that path
        see the media exactly as `forward` does."""
        return MediaBackbone(self)

    def build_inputs_embeds(self, input_ids: torch.LongTensor, **media) -> torch.Tensor:
        """Token ids with placeholders -> input embeddings with visual and audio tokens written in place.

        pixel_values (N, 3, S, S): every image and video frame of the batch, in placeholder order;
        image_landmarks (N, 68, 2) in [0, 1] of that image, image_has_face (N,);
        audio_values (A, samples) padded, audio_lengths (A,), audio_token_counts (A,): every audio clip, in order.
        """
        return self.build_inputs(input_ids, **media)[0]

    def build_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_landmarks: torch.Tensor | None = None,
        image_has_face: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_token_counts: torch.Tensor | None = None,
        **_,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`build_inputs_embeds`, and beside the embeddings the face-attended visual tokens (N, tokens, hidden) and
        what the base takes beside them (Qwen3-VL's deepstack features; None for the other bases), for the bases
        whose own forward needs them (`adapter.decoder_inputs`)."""
        device, dtype = self.device, self.dtype
        input_ids = input_ids.to(device)
        embeds = self.get_input_embeddings()(input_ids)
        visual = extras = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            visual, extras = self.adapter.visual_features(self.base, pixel_values.to(device, dtype))
            if image_landmarks is None:
                image_landmarks = torch.zeros(visual.shape[0], 68, 2)
                image_has_face = torch.zeros(visual.shape[0], dtype=torch.bool)
            visual = self.face_attention(visual, image_landmarks.to(device, dtype), image_has_face.to(device))
            embeds = _scatter(
                embeds, input_ids, self.config.image_token_id, visual.reshape(-1, visual.shape[-1]), "image"
            )
        elif bool((input_ids == self.config.image_token_id).any()):
            raise ValueError("input_ids hold image placeholders but no pixel_values were given")
        if audio_values is not None and audio_values.shape[0] > 0:
            pieces = [
                self.audio_branch(
                    audio_values[i, : int(audio_lengths[i])].to(device, dtype), int(audio_token_counts[i])
                )
                for i in range(audio_values.shape[0])
            ]
            embeds = _scatter(embeds, input_ids, self.config.audio_token_id, torch.cat(pieces), "audio")
        elif bool((input_ids == self.config.audio_token_id).any()):
            raise ValueError("input_ids hold audio placeholders but no audio_values were given")
        return embeds, visual, extras

    # ------------------------------------------------------------------------------------------------------------
    # Training forward and generation

    def position_ids(self, input_ids, attention_mask=None):
        """The language model's positions for these tokens: None for bases with ordinary 1-D positions, (3, B, L)
        M-RoPE positions from the media items' grids for the Qwen-VL bases (`mllm.model.bases`)."""
        if input_ids is None:
            return None
        return self.adapter.position_ids(
            self.base, input_ids.to(self.device), None if attention_mask is None else attention_mask.to(self.device),
            self.config.image_token_id, self.config.audio_token_id,
        )  # fmt: skip

    def vllm_inputs(self, input_ids: torch.Tensor, embeds: torch.Tensor, extras: torch.Tensor | None = None) -> dict:
        """One sequence's prompt for vLLM, from its token ids and `build_inputs_embeds` output (no padding):
        `{"prompt_embeds": embeds}` for the bases served as a plain causal LM; for the M-RoPE bases, the token ids
        with every media item's embeddings as an image item with its grid (`mllm.model.bases`), so vLLM computes
        the positions `position_ids` gives here. `extras`: this sequence's part of `build_inputs`' extras (its
        image tokens' rows, in order), for Qwen3-VL's deepstack features."""
        if self.adapter.positions != "mrope":
            return {"prompt_embeds": embeds}
        return self.adapter.vllm_prompt(
            self.base.config, input_ids, embeds, self.config.image_token_id, self.config.audio_token_id, extras
        )

    def extras_per_sequence(self, input_ids: torch.Tensor, extras: torch.Tensor | None) -> list:
        """`build_inputs`' extras (N images, tokens, ...) cut per sequence of the batch: each sequence's image
        tokens' rows, in order (None for each when there are none)."""
        if extras is None:
            return [None] * input_ids.shape[0]
        rows = extras.reshape(-1, extras.shape[-1])
        counts = (input_ids == self.config.image_token_id).sum(dim=1).tolist()
        return list(torch.split(rows, counts))

    def _for_the_base(self, input_ids, inputs_embeds):
        """For a base that writes the visual tokens itself (`adapter.decoder_inputs`: Qwen3-VL, from our precomputed
        tokens): the embeddings with its image tokens' own embedding at their positions, where it finds them."""
        image = (input_ids == self.config.image_token_id).to(inputs_embeds.device)
        token = self.get_input_embeddings().weight[self.config.image_token_id].to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image[..., None], token.expand(int(image.sum()), -1))

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        media = _pop_media(kwargs)
        if inputs_embeds is None:
            inputs_embeds, visual, extras = self.build_inputs(input_ids, **media)
            extra = self.adapter.decoder_inputs(input_ids, visual, extras)
            if extra:  # the base writes the visual tokens itself and takes what comes beside them
                kwargs.update(extra)
                inputs_embeds = self._for_the_base(input_ids, inputs_embeds)
        if kwargs.get("position_ids") is None and self.adapter.positions != "1d":
            kwargs["position_ids"] = self.position_ids(input_ids, attention_mask)
        return self.base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Generated token ids only (the prompt is not repeated)."""
        inputs_embeds, visual, extras = self.build_inputs(input_ids, **_pop_media(kwargs))
        extra = self.adapter.decoder_inputs(input_ids, visual, extras)
        if extra:
            kwargs.update(extra)
            inputs_embeds = self._for_the_base(input_ids, inputs_embeds)
        if kwargs.get("generation_config") is None:
            kwargs.setdefault("eos_token_id", self.config.eos_token_id)
            kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        if self.adapter.positions == "mrope":
            return self._generate_mrope(input_ids, inputs_embeds, attention_mask, **kwargs)
        return self.base.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def _generate_mrope(self, input_ids, inputs_embeds, attention_mask, **kwargs):
        """The base's `generate` from our embeddings, its M-RoPE positions computed from the prompt's media items
        (the base's `_prepare_position_ids_for_generation` reads them from input_ids, the token types and grids);
        each new token then follows the prompt's last position, as in the base and in vLLM."""
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        is_media = (input_ids == self.config.image_token_id) | (input_ids == self.config.audio_token_id)
        if bool(is_media.any()):
            rows = [r[m.bool()] for r, m in zip(input_ids, attention_mask, strict=True)]
            grids = [
                g
                for row in rows
                for g in self.adapter.item_grids(
                    self.base.config, row, self.config.image_token_id, self.config.audio_token_id
                )
            ]
            kwargs["mm_token_type_ids"] = is_media.int()
            kwargs["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=self.device)
        out = self.base.generate(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )
        return out[:, input_ids.shape[1] :]


class MediaBackbone:
    """`model.base_model`: media + token ids -> the language model's last hidden states (see `base_model`).

    Not an `nn.Module` of its own (it would register the model's parameters twice); it holds the model."""

    _tp_plan = None
    _pp_plan = None

    def __init__(self, model: EmoReasonForConditionalGeneration):
        self.model = model

    def __call__(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        media = _pop_media(kwargs)
        extra = {}
        if inputs_embeds is None:
            inputs_embeds, visual, extras = self.model.build_inputs(input_ids, **media)
            extra = self.model.adapter.decoder_inputs(input_ids, visual, extras)
        if kwargs.get("position_ids") is None and self.model.adapter.positions != "1d":
            kwargs["position_ids"] = self.model.position_ids(input_ids, attention_mask)
        if extra:  # the base's own model writes its visual tokens and takes what comes beside them
            inputs_embeds = self.model._for_the_base(input_ids, inputs_embeds)
            return self.model.base.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs, **extra)
        decoder = self.model.adapter.language_model(self.model.base)
        return decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


_MEDIA_KEYS = (
    "pixel_values",
    "image_landmarks",
    "image_has_face",
    "audio_values",
    "audio_lengths",
    "audio_token_counts",
)


def _pop_media(kwargs: dict) -> dict:
    """Take the media tensors out of a call's keyword arguments: they go to the seam, the rest to the base."""
    return {k: kwargs.pop(k) for k in _MEDIA_KEYS if k in kwargs}


def _scatter(embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, values: torch.Tensor, what: str):
    mask = input_ids == token_id
    slots = int(mask.sum())
    if slots != values.shape[0]:
        raise ValueError(f"{slots} {what} placeholder tokens in input_ids but {values.shape[0]} {what} embeddings")
    return embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModel load EmoReason checkpoints. Safe to call twice."""
    with contextlib.suppress(ValueError):
        AutoConfig.register(EmoReasonConfig.model_type, EmoReasonConfig)
    with contextlib.suppress(ValueError):
        AutoModel.register(EmoReasonConfig, EmoReasonForConditionalGeneration)
