"""`EmoReasonConfig`: what the composed model is made of and how media are sampled into it."""

from __future__ import annotations

from transformers import PretrainedConfig

IMAGE_START, IMAGE_END, IMAGE_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
AUDIO_START, AUDIO_END, AUDIO_CONTEXT = "<audio>", "</audio>", "<AUDIO_CONTEXT>"
AUDIO_PLACEHOLDERS = (AUDIO_START, AUDIO_END, AUDIO_CONTEXT)


class EmoReasonConfig(PretrainedConfig):
    """Composition of a base MLLM, a Wav2Vec2 audio encoder and the face-region attention.

    base_model / audio_encoder: hub ids or local paths the parts were first loaded from (provenance; a saved
    EmoReason checkpoint carries their configs and weights, so loading it needs neither).
    base_config / audio_config: the parts' own configs, as dicts.
    """

    model_type = "emoreason"

    def __init__(
        self,
        base_model: str | None = None,
        base_config: dict | None = None,
        audio_encoder: str | None = None,
        audio_config: dict | None = None,
        face_heads: int = 4,
        face_gate_init: float = 1e-2,
        face_distance_mask: bool = True,
        face_distance_sigma: float = 0.25,
        vision_input: str = "face_crop",
        audio_projector: str = "mlp2x_gelu",
        audio_tokens_per_second: float = 2.0,
        max_audio_tokens: int = 32,
        frames_per_clip: int = 8,
        max_frames: int = 32,
        max_audio_seconds: float = 30.0,
        image_token: str = IMAGE_CONTEXT,
        audio_token: str = AUDIO_CONTEXT,
        image_token_id: int | None = None,
        audio_token_id: int | None = None,
        label_space: str = "abaw_expr",
        **kwargs,
    ):
        if vision_input not in ("face_crop", "frame"):
            raise ValueError(f"vision_input must be 'face_crop' or 'frame', got {vision_input!r}")
        if audio_tokens_per_second <= 0 or max_audio_tokens < 1:
            raise ValueError("audio_tokens_per_second must be > 0 and max_audio_tokens >= 1")
        if frames_per_clip < 1 or max_frames < frames_per_clip:
            raise ValueError(f"need 1 <= frames_per_clip <= max_frames, got {frames_per_clip}, {max_frames}")
        self.base_model = base_model
        self.base_config = base_config or {}
        self.audio_encoder = audio_encoder
        self.audio_config = audio_config or {}
        self.face_heads = face_heads
        self.face_gate_init = face_gate_init
        self.face_distance_mask = face_distance_mask
        self.face_distance_sigma = face_distance_sigma
        self.vision_input = vision_input
        self.audio_projector = audio_projector
        self.audio_tokens_per_second = audio_tokens_per_second
        self.max_audio_tokens = max_audio_tokens
        self.frames_per_clip = frames_per_clip
        self.max_frames = max_frames
        self.max_audio_seconds = max_audio_seconds
        self.image_token = image_token
        self.audio_token = audio_token
        self.image_token_id = image_token_id
        self.audio_token_id = audio_token_id
        self.label_space = label_space
        super().__init__(**kwargs)
