"""`EmoReasonForConditionalGeneration`: an open MLLM (`base`), face-region attention and a Wav2Vec2 audio branch,
meeting in one method, `build_inputs_embeds`, which training, reference generation and serving all call."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, Wav2Vec2Config, Wav2Vec2Model

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
        tokenizer = prepare_tokenizer(str(base))
        base_model = adapter.load(str(base), dtype=dtype)
        if base_model.get_input_embeddings().num_embeddings < len(tokenizer):
            base_model.resize_token_embeddings(len(tokenizer))
        encoder = Wav2Vec2Model.from_pretrained(str(audio_encoder), dtype=dtype)
        config = EmoReasonConfig(
            base_model=str(base),
            base_config=base_model.config.to_dict(),
            audio_encoder=str(audio_encoder),
            audio_config=encoder.config.to_dict(),
            image_token_id=tokenizer.convert_tokens_to_ids(config_overrides.get("image_token", "<IMG_CONTEXT>")),
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

    def freeze_base(self) -> None:
        """Freeze everything, then unfreeze the new modules (LoRA, if any, is added on top by PEFT)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.set_trainable_new_modules(True)

    # ------------------------------------------------------------------------------------------------------------
    # The seam

    def get_input_embeddings(self) -> nn.Module:
        return self.adapter.input_embeddings(self.base)

    def build_inputs_embeds(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_landmarks: torch.Tensor | None = None,
        image_has_face: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        audio_token_counts: torch.Tensor | None = None,
        **_,
    ) -> torch.Tensor:
        """Token ids with placeholders -> input embeddings with visual and audio tokens written in place.

        pixel_values (N, 3, S, S): every image and video frame of the batch, in placeholder order;
        image_landmarks (N, 68, 2) in [0, 1] of that image, image_has_face (N,);
        audio_values (A, samples) padded, audio_lengths (A,), audio_token_counts (A,): every audio clip, in order.
        """
        device, dtype = self.device, self.dtype
        input_ids = input_ids.to(device)
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None and pixel_values.shape[0] > 0:
            visual = self.adapter.image_features(self.base, pixel_values.to(device, dtype))
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
        return embeds

    # ------------------------------------------------------------------------------------------------------------
    # Training forward and generation

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        media = _pop_media(kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.build_inputs_embeds(input_ids, **media)
        return self.base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Generated token ids only (the prompt is not repeated)."""
        inputs_embeds = self.build_inputs_embeds(input_ids, **_pop_media(kwargs))
        kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        return self.base.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint folders: found at once and checked before anything heavy is loaded

# A hub id is `org/name` only; anything else that is not on disk is a local path that is missing.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROCESSOR_FILES = ("emoreason_processor.json", "preprocessor_config.json", "tokenizer_config.json")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    import huggingface_hub

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags) or huggingface_hub.is_offline_mode()


def looks_like_hub_id(name: str) -> bool:
    """`org/name`, not on disk, and no part of it on disk (`runs/model` with a local `runs/` is a local path)."""
    if not _HUB_ID.match(name) or name.startswith(".") or os.sep != "/" and os.sep in name:
        return False
    return not Path(name).exists() and not Path(name.split("/")[0]).exists()


def _missing_folder(name: str, what: str) -> FileNotFoundError:
    path = Path(os.path.abspath(os.path.expanduser(name)))
    closest = next((p for p in path.parents if p.exists()), None)
    hint = f"; the closest existing folder is {closest}" if closest is not None and str(closest) != "/" else ""
    return FileNotFoundError(f"{name}: {what} not found (no such folder{hint})")


def resolve_checkpoint(
    name_or_path, what: str = "model folder", download: bool = True, revision=None, subfolder: str = ""
) -> Path | str:
    """A local folder, checked at once, or for an `org/name` id that is not on disk: the hub snapshot's folder
    (`download`; from the cache only when HF_HUB_OFFLINE is set) or the id itself (`download=False`, for
    transformers to fetch). A path that looks local and is missing fails here, never after hub retries."""
    name = os.fspath(name_or_path)
    if not looks_like_hub_id(name):
        path = Path(os.path.expanduser(name)) / subfolder
        if not path.exists():
            raise _missing_folder(str(Path(name) / subfolder) if subfolder else name, what)
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: is a file, not a {what}")
        return path
    if not download:
        return name
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=offline))
    except Exception as exc:
        if offline:
            raise FileNotFoundError(
                f"{name}: not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set, so the hub "
                "was not asked)"
            ) from exc
        raise OSError(f"{name}: not a local folder, and the Hugging Face hub could not provide it: {exc}") from exc
    return folder / subfolder if subfolder else folder


def read_json(path: Path) -> dict:
    """A JSON file's content, or one line naming the file and what is wrong with it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {exc}") from exc


def check_safetensors(path: Path) -> None:
    """The header parses and the data it describes fits the file exactly (a truncated copy does not)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ValueError(f"{path}: not a safetensors file, or truncated ({size} bytes)")
        try:
            header = json.loads(fh.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{path}: corrupt safetensors header ({exc})") from exc
    if 8 + length + end != size:
        raise ValueError(
            f"{path}: truncated or corrupt: its header describes {8 + length + end} bytes, the file has {size}"
        )


def check_checkpoint(folder: Path, processor: bool = False) -> None:
    """Before loading: config.json parses and is an EmoReason config, the weights are present and whole, and (with
    `processor`) the tokenizer and processor files are there. Each failure is one line naming the file."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if config.get("model_type") != EmoReasonConfig.model_type:
        raise ValueError(
            f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not an EmoReason checkpoint "
            "(compose one with EmoReasonForConditionalGeneration.from_base, or emoreason make-tiny)"
        )
    index = folder / "model.safetensors.index.json"
    if index.exists():
        for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
            check_safetensors(folder / shard)
    elif not (folder / "pytorch_model.bin").is_file():
        check_safetensors(folder / "model.safetensors")
    for name in ("generation_config.json", "special_tokens_map.json", "tokenizer.json", "chat_template.json"):
        if (folder / name).exists():
            read_json(folder / name)
    if processor:
        for name in PROCESSOR_FILES:
            read_json(folder / name)
        if not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILES):
            raise FileNotFoundError(f"{folder / 'tokenizer.json'}: missing (the tokenizer's vocabulary)")
