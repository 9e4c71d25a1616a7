"""`EmoReasonProcessor`: OpenAI-style chat messages with image, video and audio parts -> batched model inputs.

    processor = EmoReasonProcessor.from_pretrained("tiny/emoreason")
    batch = processor([[{"role": "user", "content": [
        {"type": "video", "video": "clip.mp4"},
        {"type": "text", "text": "What does this person feel?"}]}]])
    model.generate(**batch, max_new_tokens=64)

Media go through `mllm.media` and `mllm.face` (tracked landmarks, aligned face crops), images are normalised as the
base's image processor does, audio as the Wav2Vec2 feature extractor does. Placeholders are expanded to one token
per visual/audio embedding; `build_inputs_embeds` writes the embeddings there.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mllm.config import (
    AUDIO_CONTEXT,
    AUDIO_END,
    AUDIO_PLACEHOLDERS,
    AUDIO_START,
    IMAGE_CONTEXT,
    IMAGE_END,
    IMAGE_START,
    EmoReasonConfig,
)
from mllm.media import AUDIO_SAMPLE_RATE, load_audio, load_image, load_video

PROCESSOR_FILE = "emoreason_processor.json"


def prepare_tokenizer(name_or_path):
    """The base's tokenizer with the image and audio placeholder tokens present (added when missing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    missing = [
        t for t in (IMAGE_START, IMAGE_END, IMAGE_CONTEXT, *AUDIO_PLACEHOLDERS) if t not in tokenizer.get_vocab()
    ]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


@dataclass
class _Media:
    """What one conversation contributes beside its text."""

    pixel_values: list[torch.Tensor] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    has_face: list[bool] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)


def _decode_data_url(url: str) -> bytes | str:
    if url.startswith("data:"):
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=True)
        except (IndexError, ValueError) as exc:
            raise ValueError("malformed base64 data URL in a media part") from exc
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url:
        raise ValueError(f"only local paths, file:// and data: URLs are accepted, got {url[:40]!r}")
    return url


def _part_source(part: dict, kind: str):
    """The media a content part names: a path, bytes or an array."""
    if kind in part:
        value = part[kind]
        return _decode_data_url(value) if isinstance(value, str) else value
    url_key = f"{kind}_url"
    if url_key in part:
        url = part[url_key]["url"] if isinstance(part[url_key], dict) else part[url_key]
        return _decode_data_url(url)
    if kind == "audio" and "input_audio" in part:
        return base64.b64decode(part["input_audio"]["data"])
    raise ValueError(f"content part of type {part.get('type')!r} has no {kind!r} or {url_key!r} field")


class EmoReasonProcessor:
    def __init__(
        self,
        tokenizer,
        image_size: int,
        image_mean,
        image_std,
        tokens_per_image: int,
        feature_extractor=None,
        frames_per_clip: int = 8,
        max_frames: int = 32,
        max_audio_seconds: float = 30.0,
        audio_tokens_per_second: float = 2.0,
        max_audio_tokens: int = 32,
        vision_input: str = "face_crop",
        face_cache: bool = True,
    ):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.image_std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.tokens_per_image = int(tokens_per_image)
        self.feature_extractor = feature_extractor
        self.frames_per_clip = frames_per_clip
        self.max_frames = max_frames
        self.max_audio_seconds = max_audio_seconds
        self.audio_tokens_per_second = audio_tokens_per_second
        self.max_audio_tokens = max_audio_tokens
        self.vision_input = vision_input
        self.face_cache = face_cache

    # ------------------------------------------------------------------------------------------------------------
    # Construction and persistence

    @classmethod
    def from_base(cls, base, audio_encoder, config: EmoReasonConfig, **kwargs) -> EmoReasonProcessor:
        from transformers import AutoImageProcessor, Wav2Vec2FeatureExtractor

        from mllm.model.bases import get_adapter

        image_processor = AutoImageProcessor.from_pretrained(str(base), backend="pil")
        adapter = get_adapter(config.base_config["model_type"])
        base_config = adapter.config_from_dict(config.base_config)
        return cls(
            tokenizer=prepare_tokenizer(base),
            image_size=adapter.image_size(base_config),
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
            tokens_per_image=adapter.tokens_per_image(base_config),
            feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(str(audio_encoder)),
            frames_per_clip=config.frames_per_clip,
            max_frames=config.max_frames,
            max_audio_seconds=config.max_audio_seconds,
            audio_tokens_per_second=config.audio_tokens_per_second,
            max_audio_tokens=config.max_audio_tokens,
            vision_input=config.vision_input,
            **kwargs,
        )

    def _settings(self) -> dict:
        return {
            "image_size": self.image_size,
            "image_mean": self.image_mean.reshape(-1).tolist(),
            "image_std": self.image_std.reshape(-1).tolist(),
            "tokens_per_image": self.tokens_per_image,
            "frames_per_clip": self.frames_per_clip,
            "max_frames": self.max_frames,
            "max_audio_seconds": self.max_audio_seconds,
            "audio_tokens_per_second": self.audio_tokens_per_second,
            "max_audio_tokens": self.max_audio_tokens,
            "vision_input": self.vision_input,
        }

    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        if self.feature_extractor is not None:
            self.feature_extractor.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps(self._settings(), indent=1))

    @classmethod
    def from_pretrained(cls, directory, **overrides) -> EmoReasonProcessor:
        from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor

        directory = Path(directory)
        settings_file = directory / PROCESSOR_FILE
        if not settings_file.exists():
            raise FileNotFoundError(f"{settings_file}: not an EmoReason processor folder")
        settings = {**json.loads(settings_file.read_text()), **overrides}
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(str(directory)),
            feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(str(directory)),
            **settings,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Media -> tensors

    def _pixels(self, rgb: np.ndarray, landmarks_68: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray, bool]:
        """The image the vision tower sees (aligned face crop, or the whole frame) and the landmarks in its [0, 1]
        coordinates."""
        from PIL import Image

        from mllm.face import align_face

        size = self.image_size
        has_face = landmarks_68 is not None and bool(np.isfinite(landmarks_68).all())
        if has_face and self.vision_input == "face_crop":
            aligned = align_face(rgb, landmarks_68, size=size)
            image, points = aligned.crop, aligned.landmarks_01
        else:
            image = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
            h, w = rgb.shape[:2]
            points = (
                np.clip(landmarks_68 / np.array([w, h], dtype=np.float32), 0, 1)
                if has_face
                else np.full((68, 2), 0.5, np.float32)
            )
        chw = image.astype(np.float32).transpose(2, 0, 1) / 255.0
        pixels = torch.from_numpy((chw - self.image_mean) / self.image_std)
        return pixels, points.astype(np.float32), has_face

    def _image(self, source, media: _Media) -> str:
        from mllm.face import DetectorSettings, FaceDetector, image_faces

        if isinstance(source, np.ndarray):  # an array has no content hash to cache by
            rgb = source
            faces = FaceDetector(DetectorSettings(min_face_fraction=0.0)).detect(rgb)
        else:
            rgb = load_image(source)
            faces = image_faces(source, image=rgb, cache=self.face_cache)
        pixels, points, has_face = self._pixels(rgb, faces[0].landmarks_68 if faces else None)
        media.pixel_values.append(pixels)
        media.landmarks.append(points)
        media.has_face.append(has_face)
        return self._image_tokens()

    def _image_tokens(self) -> str:
        return IMAGE_START + IMAGE_CONTEXT * self.tokens_per_image + IMAGE_END

    def _audio_tokens(self, samples: np.ndarray) -> str:
        from mllm.model.audio import audio_token_count

        n = audio_token_count(len(samples), self.audio_tokens_per_second, self.max_audio_tokens)
        return AUDIO_START + AUDIO_CONTEXT * n + AUDIO_END

    def _audio(self, source, media: _Media, max_seconds: float) -> str:
        if isinstance(source, np.ndarray):
            samples = source.astype(np.float32).reshape(-1)
        else:
            samples = load_audio(source, end_s=max_seconds).samples
        samples = samples[: int(max_seconds * AUDIO_SAMPLE_RATE)]
        if len(samples) == 0:
            return ""
        media.audio.append(samples)
        return self._audio_tokens(samples)

    def _video(self, source, media: _Media, num_frames: int, max_seconds: float) -> str:
        from mllm.face import video_face_track

        clip = load_video(source, num_frames=num_frames, end_s=max_seconds)  # the first `max_seconds` of the clip
        # Same sampling arguments as the decode: they are part of the face cache key.
        track = video_face_track(source, num_frames=num_frames, end_s=max_seconds, video=clip, cache=self.face_cache)
        lines = []
        for i in range(len(clip)):
            points = track.landmarks_68[i] if track.has_face[i] else None
            pixels, normalised, has_face = self._pixels(clip.frames[i], points)
            media.pixel_values.append(pixels)
            media.landmarks.append(normalised)
            media.has_face.append(has_face)
            lines.append(f"Frame {i + 1} at {clip.timestamps_s[i]:.1f}s: {self._image_tokens()}")
        text = "\n".join(lines)
        if clip.audio is not None:
            samples = clip.audio.samples[: int(max_seconds * AUDIO_SAMPLE_RATE)]
            if len(samples):
                media.audio.append(samples)
                text += "\nAudio: " + self._audio_tokens(samples)
        return text

    def _render_content(self, content, media: _Media, limits: dict) -> str:
        if isinstance(content, str):
            return content
        num_frames = min(int(limits.get("frames", self.frames_per_clip)), self.max_frames)
        max_seconds = min(float(limits.get("seconds", self.max_audio_seconds)), self.max_audio_seconds)
        pieces = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                text = part.get("text", "")
                if any(t in text for t in (IMAGE_CONTEXT, AUDIO_CONTEXT)):
                    raise ValueError("text parts may not contain placeholder tokens")
                pieces.append(text)
            elif kind in ("image", "image_url"):
                pieces.append(self._image(_part_source(part, "image"), media))
            elif kind in ("video", "video_url"):
                pieces.append(self._video(_part_source(part, "video"), media, num_frames, max_seconds))
            elif kind in ("audio", "audio_url", "input_audio"):
                pieces.append(self._audio(_part_source(part, "audio"), media, max_seconds))
            else:
                raise ValueError(
                    f"unknown content part type {kind!r}; valid: text, image, image_url, video, "
                    "video_url, audio, audio_url, input_audio"
                )
        return "\n".join(p for p in pieces if p)

    # ------------------------------------------------------------------------------------------------------------
    # Conversations -> batch

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def __call__(
        self,
        conversations: list[list[dict]] | list[dict],
        add_generation_prompt: bool = True,
        return_labels: bool = False,
        limits: dict | None = None,
        padding_side: str = "left",
    ) -> dict:
        """Tokenise a batch of conversations. `return_labels`: labels are the assistant turns' tokens (the rest
        -100) and no generation prompt is added. `limits`: {"frames": N, "seconds": S} for this request."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if not conversations:
            raise ValueError("no conversations to process")
        limits = limits or {}
        unknown = set(limits) - {"frames", "seconds"}
        if unknown or any(not isinstance(v, int | float) or v <= 0 for v in limits.values()):
            raise ValueError(f"limits take positive 'frames' and 'seconds', got {limits}")
        ids, labels, all_media = [], [], _Media()
        for messages in conversations:
            media = _Media()
            rendered = [
                {"role": m["role"], "content": self._render_content(m["content"], media, limits)} for m in messages
            ]
            if return_labels:
                token_ids, label_ids = self._tokenise_with_labels(rendered)
                labels.append(label_ids)
            else:
                token_ids = self.tokenizer(self._render(rendered, add_generation_prompt), add_special_tokens=False)[
                    "input_ids"
                ]
            ids.append(token_ids)
            for name in ("pixel_values", "landmarks", "has_face", "audio"):
                getattr(all_media, name).extend(getattr(media, name))
        return self._collate(ids, labels if return_labels else None, all_media, padding_side)

    def _tokenise_with_labels(self, rendered: list[dict]) -> tuple[list[int], list[int]]:
        tok = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        token_ids = tok(self._render(rendered, add_generation_prompt=False))
        label_ids = [-100] * len(token_ids)
        for i, message in enumerate(rendered):
            if message["role"] != "assistant":
                continue
            start = len(tok(self._render(rendered[:i], add_generation_prompt=True)))
            end = len(tok(self._render(rendered[: i + 1], add_generation_prompt=False)))
            # The turn's text and its end-of-turn token; not the newline the template adds after it.
            end = min(end, len(token_ids))
            while end > start and token_ids[end - 1] != self.tokenizer.eos_token_id:
                end -= 1
            label_ids[start:end] = token_ids[start:end]
        return token_ids, label_ids

    def _collate(self, ids, labels, media: _Media, padding_side: str) -> dict:
        longest = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        label_tensor = torch.full((len(ids), longest), -100, dtype=torch.long) if labels is not None else None
        for row, seq in enumerate(ids):
            span = slice(longest - len(seq), longest) if padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq)
            attention_mask[row, span] = 1
            if label_tensor is not None:
                label_tensor[row, span] = torch.tensor(labels[row])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if label_tensor is not None:
            batch["labels"] = label_tensor
        if media.pixel_values:
            batch["pixel_values"] = torch.stack(media.pixel_values)
            batch["image_landmarks"] = torch.from_numpy(np.stack(media.landmarks))
            batch["image_has_face"] = torch.tensor(media.has_face)
        if media.audio:
            lengths = [len(a) for a in media.audio]
            values = np.zeros((len(media.audio), max(lengths)), np.float32)
            for i, samples in enumerate(media.audio):
                values[i, : len(samples)] = self._normalise_audio(samples)
            from mllm.model.audio import audio_token_count

            batch["audio_values"] = torch.from_numpy(values)
            batch["audio_lengths"] = torch.tensor(lengths)
            batch["audio_token_counts"] = torch.tensor(
                [audio_token_count(n, self.audio_tokens_per_second, self.max_audio_tokens) for n in lengths]
            )
        return batch

    def _normalise_audio(self, samples: np.ndarray) -> np.ndarray:
        if self.feature_extractor is None or not self.feature_extractor.do_normalize:
            return samples
        return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
