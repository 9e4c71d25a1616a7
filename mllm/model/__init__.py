"""The EmoReason model: base MLLM + face-region guided attention + Wav2Vec2 audio branch, one embedding seam."""

from mllm.config import EmoReasonConfig
from mllm.model.audio import AudioBranch, audio_token_count
from mllm.model.bases import BASE_ADAPTERS, REFUSED, get_adapter
from mllm.model.face_attention import FaceRegionGuidedAttention
from mllm.model.modeling import EmoReasonForConditionalGeneration, register_auto_classes

register_auto_classes()

__all__ = [
    "BASE_ADAPTERS",
    "REFUSED",
    "AudioBranch",
    "EmoReasonConfig",
    "EmoReasonForConditionalGeneration",
    "FaceRegionGuidedAttention",
    "audio_token_count",
    "get_adapter",
    "register_auto_classes",
]
