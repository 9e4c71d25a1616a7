"""`EmoReasonProcessor`: OpenAI-style chat messages with image, video and audio parts -> batched model inputs.

    processor = EmoReasonProcessor.from_pretrained("tiny/emoreason")
    batch = processor([[{"role": "user", "content": [
        {"type": "video", "video": "clip.mp4"},
        {"type": "text", "text": "What does this person feel?"}]}]])
    model.generate(**batch, max_new_tokens=64)

Media go through `mllm.media` and `mllm.face` (tracked landmarks, aligned face crops), images are normalised as the
base's image processor does, audio as the Wav2Vec2 feature extractor does. Placeholders are expanded to one token
per visual/audio embedding; `build_inputs_embeds` writes the embeddings there.

The data builders' prompts go through unchanged: a video part may carry a time window (`start_s`, `end_s`), the
frames to use by number (`frame_indices`, 1-based: frame 1 plays at 0 s), or a list of aligned face crops
(`frames`, with their `frame_indices` placing them on the video's clock for its audio). Anything the processor
cannot use exactly as given is refused with a `ProcessorInputError` (a ValueError) or a `MediaError` naming the
conversation, message and content part, and the file.
"""

from __future__ import annotations

import json
import math
import os
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
from mllm.media import (
    AUDIO_SAMPLE_RATE,
    MediaError,
    MediaTooShortError,
    audio_from_array,
    image_from_array,
    load_audio,
    load_image,
    load_video,
    probe_video,
)
from mllm.parts import (
    PART_KEYS,
    PART_MEDIA,
    ROLES,
    UNRESTRICTED,
    MediaAccess,
    ProcessingStopped,
    ProcessorInputError,
    as_conversations,
    checked_text,
    frame_numbers,
    frame_times,
    is_number,
    part_source,
    refuse,
    seconds_field,
    spread_positions,
)

PROCESSOR_FILE = "emoreason_processor.json"
# Wav2Vec2's convolutional feature encoder (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) needs 400 samples
# (25 ms at 16 kHz) for one output frame; shorter audio would crash its last convolution.
DEFAULT_MIN_AUDIO_SAMPLES = 400


def receptive_field(audio_config: dict) -> int:
    """Samples a Wav2Vec2-style convolutional feature encoder needs to produce one frame."""
    kernels = audio_config.get("conv_kernel")
    strides = audio_config.get("conv_stride")
    if not kernels or not strides or len(kernels) != len(strides):
        return DEFAULT_MIN_AUDIO_SAMPLES
    field_size, jump = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field_size += (int(kernel) - 1) * jump
        jump *= int(stride)
    return field_size


def prepare_tokenizer(name_or_path, image_tokens: tuple[str, str, str] = (IMAGE_START, IMAGE_CONTEXT, IMAGE_END)):
    """The base's tokenizer with the image tokens the adapter writes (start, context, end) and the audio
    placeholder tokens present (added when missing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    start, context, end = image_tokens
    missing = [t for t in (start, end, context, *AUDIO_PLACEHOLDERS) if t not in tokenizer.get_vocab()]
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
    parts: int = 0  # media parts rendered so far


@dataclass(frozen=True)
class _Limits:
    """One call's bounds: frames and seconds per part, what its media may name and cost, and whether to stop."""

    frames: int
    seconds: float
    access: MediaAccess = UNRESTRICTED
    should_stop: object = None  # a callable -> bool, checked before each part and frame


class EmoReasonProcessor:
    def __init__(
        self,
        tokenizer,
        image_size: int,
        image_mean,
        image_std,
        tokens_per_image: int,
        feature_extractor=None,
        image_tokens=(IMAGE_START, IMAGE_CONTEXT, IMAGE_END),
        frames_per_clip: int = 8,
        max_frames: int = 32,
        max_audio_seconds: float = 30.0,
        audio_tokens_per_second: float = 2.0,
        max_audio_tokens: int = 32,
        vision_input: str = "face_crop",
        face_cache=True,  # True (the default cache), False (none) or a FaceCache (e.g. a server's bounded one)
        min_audio_samples: int = DEFAULT_MIN_AUDIO_SAMPLES,
        face_detector: str = "auto",
    ):
        from mllm.face.landmarks import DETECTORS

        if face_detector not in DETECTORS:
            raise ValueError(f"face_detector must be one of {', '.join(DETECTORS)}; got {face_detector!r}")
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.image_std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.tokens_per_image = int(tokens_per_image)
        self.image_tokens = tuple(image_tokens)  # start, one context token per visual token, end
        self.feature_extractor = feature_extractor
        self.frames_per_clip = frames_per_clip
        self.max_frames = max_frames
        self.max_audio_seconds = max_audio_seconds
        self.audio_tokens_per_second = audio_tokens_per_second
        self.max_audio_tokens = max_audio_tokens
        self.vision_input = vision_input
        self.face_cache = face_cache
        self.min_audio_samples = int(min_audio_samples)
        # hog (fast), cnn, or auto: HOG, then costlier retries where it finds nothing (mllm.face, the cascade).
        self.face_detector = face_detector

    # ------------------------------------------------------------------------------------------------------------
    # Construction and persistence

    @classmethod
    def from_base(cls, base, audio_encoder, config: EmoReasonConfig, **kwargs) -> EmoReasonProcessor:
        from transformers import AutoImageProcessor, Wav2Vec2FeatureExtractor

        from mllm.model.bases import get_adapter

        image_processor = AutoImageProcessor.from_pretrained(str(base), backend="pil")
        adapter = get_adapter(config.base_config["model_type"])
        base_config = adapter.config_from_dict(config.base_config)
        kwargs.setdefault("min_audio_samples", receptive_field(config.audio_config))
        image_size = adapter.image_size(base_config, image_processor)
        return cls(
            tokenizer=prepare_tokenizer(base, image_tokens=adapter.image_tokens),
            image_size=image_size,
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
            tokens_per_image=adapter.tokens_per_image(base_config, image_size),
            image_tokens=adapter.image_tokens,
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
            "image_tokens": list(self.image_tokens),
            "frames_per_clip": self.frames_per_clip,
            "max_frames": self.max_frames,
            "max_audio_seconds": self.max_audio_seconds,
            "audio_tokens_per_second": self.audio_tokens_per_second,
            "max_audio_tokens": self.max_audio_tokens,
            "vision_input": self.vision_input,
            "min_audio_samples": self.min_audio_samples,
            "face_detector": self.face_detector,
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
        from transformers import AutoTokenizer, PretrainedConfig, Wav2Vec2FeatureExtractor

        directory = Path(directory)
        settings_file = directory / PROCESSOR_FILE
        if not settings_file.exists():
            raise FileNotFoundError(f"{settings_file}: not an EmoReason processor folder")
        settings = {**json.loads(settings_file.read_text()), **overrides}
        # Our config.json is one AutoConfig knows only once the model package is imported; when the tokenizer names
        # its own class, a plain config spares transformers' fallback and the warning it prints on every load.
        try:
            declared = "tokenizer_class" in json.loads((directory / "tokenizer_config.json").read_text())
        except (OSError, ValueError, TypeError):
            declared = False  # AutoTokenizer then reads the folder itself, and names what is wrong with it
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(
                str(directory), **({"config": PretrainedConfig()} if declared else {})
            ),
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
        aligned = None
        if has_face and self.vision_input == "face_crop":
            try:
                aligned = align_face(rgb, landmarks_68, size=size)
            except ValueError:  # degenerate landmarks (eye centres coincide): no usable face
                has_face = False
        if aligned is not None:
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

    def _add_frame(self, media: _Media, rgb: np.ndarray, landmarks_68: np.ndarray | None) -> str:
        pixels, points, has_face = self._pixels(rgb, landmarks_68)
        media.pixel_values.append(pixels)
        media.landmarks.append(points)
        media.has_face.append(has_face)
        return self._image_tokens()

    def _image(self, source, media: _Media) -> str:
        from mllm.face import DetectorSettings, FaceDetector, image_faces

        settings = DetectorSettings(min_face_fraction=0.0, detector=self.face_detector)
        if isinstance(source, str | bytes):
            rgb = load_image(source)
            faces = image_faces(source, settings=settings, image=rgb, cache=self.face_cache)
        else:  # an array or a picture in memory has no content hash to cache by
            rgb = image_from_array(source)
            faces = FaceDetector(settings).detect(rgb)
        return self._add_frame(media, rgb, faces[0].landmarks_68 if faces else None)

    def _image_tokens(self) -> str:
        start, context, end = self.image_tokens
        return start + context * self.tokens_per_image + end

    def _audio_tokens(self, samples: np.ndarray) -> str:
        from mllm.model.audio import audio_token_count

        n = audio_token_count(len(samples), self.audio_tokens_per_second, self.max_audio_tokens)
        return AUDIO_START + AUDIO_CONTEXT * n + AUDIO_END

    def _add_audio(self, media: _Media, samples: np.ndarray, name: str, max_seconds: float) -> str:
        """Audio cut to the request's seconds; refused when shorter than the audio encoder's receptive field."""
        samples = samples[: int(max_seconds * AUDIO_SAMPLE_RATE)]
        if len(samples) < self.min_audio_samples:
            raise MediaTooShortError(
                name,
                f"audio lasts {len(samples) / AUDIO_SAMPLE_RATE * 1000:.0f} ms ({len(samples)} samples at 16 kHz); "
                f"the audio encoder needs at least {self.min_audio_samples / AUDIO_SAMPLE_RATE * 1000:.0f} ms",
            )
        media.audio.append(samples)
        return self._audio_tokens(samples)

    def _audio(self, part: dict, media: _Media, limits: _Limits) -> str:
        source = self._source(part, "audio", limits)
        start_s, end_s = seconds_field(part, "start_s"), seconds_field(part, "end_s")
        if isinstance(source, np.ndarray):
            samples = audio_from_array(source)
            first = int(round((start_s or 0.0) * AUDIO_SAMPLE_RATE))
            last = None if end_s is None else int(round(end_s * AUDIO_SAMPLE_RATE))
            if first >= len(samples) or (last is not None and last <= first):
                refuse(f"<array>: empty time window [{start_s}, {end_s}] of {len(samples)} samples")
            return self._add_audio(media, samples[first:last], "<array>", limits.seconds)
        start = start_s or 0.0
        end = start + limits.seconds if end_s is None else min(end_s, start + limits.seconds)
        audio = load_audio(source, start_s=start_s, end_s=end)
        return self._add_audio(media, audio.samples, audio.source, limits.seconds)

    def _video(self, part: dict, media: _Media, limits: _Limits) -> str:
        frames = part.get("frames")
        start_s, end_s = seconds_field(part, "start_s"), seconds_field(part, "end_s")
        if frames is not None:
            if start_s is not None or end_s is not None:
                refuse("a frames list is placed in time by its frame_indices, not start_s/end_s")
            return self._crop_frames(part, frames, media, limits)
        source = self._source(part, "video", limits)
        if "frame_indices" in part:
            if start_s is not None or end_s is not None:
                refuse("give frame_indices or a start_s/end_s window, not both")
            return self._video_frames_at(source, frame_numbers(part["frame_indices"], None), media, limits)
        return self._video_window(source, start_s, end_s, media, limits)

    def _video_window(self, source, start_s, end_s, media: _Media, limits: _Limits) -> str:
        """`frames` frames spread over the window (the first `seconds` of it), and the window's audio."""
        from mllm.face import video_face_track

        start = start_s or 0.0
        end = start + limits.seconds if end_s is None else min(end_s, start + limits.seconds)
        clip = load_video(source, num_frames=limits.frames, start_s=start_s, end_s=end)
        # Same sampling arguments as the decode: they are part of the face cache key.
        track = video_face_track(
            source,
            num_frames=limits.frames,
            start_s=start_s,
            end_s=end,
            settings=self.tracker_settings(),
            video=clip,
            cache=self.face_cache,
        )
        return self._clip_text(clip, track, media, limits)

    def _video_frames_at(self, source, numbers: np.ndarray, media: _Media, limits: _Limits) -> str:
        """Frames chosen by number (1-based: frame n plays at (n - 1) / fps), and the audio they span."""
        info = probe_video(source)
        times = frame_times(source, numbers, info)
        inside = times < times[0] + limits.seconds  # the request's seconds bound the span used
        numbers, times = numbers[inside], times[inside]
        picked = times[spread_positions(len(times), limits.frames)]
        start, end = float(times[0]), float(times[-1] + 1.0 / info.average_fps)
        clip = load_video(source, at_s=picked, start_s=start, end_s=end)
        track = self._track_at(source, clip, picked)
        return self._clip_text(clip, track, media, limits)

    def _track_at(self, source, clip, times: np.ndarray):
        """The face track over frames sampled at given times, cached like `video_face_track`'s own results (its
        sampling arguments cannot express given times, so the cache key is made here)."""
        from mllm.face import FaceCache, FaceTrack, content_hash, video_face_track

        settings = self.tracker_settings()
        if not self.face_cache:
            return video_face_track(source, settings=settings, video=clip, cache=False)
        store = self.face_cache if isinstance(self.face_cache, FaceCache) else FaceCache()
        sampling = {"at_s": [round(float(t), 6) for t in times], "window_s": [round(w, 6) for w in clip.window_s]}
        key = store.key(content_hash(source), kind="video", sampling=sampling, settings=settings.to_dict())
        arrays = store.get(key)
        if arrays is not None and len(arrays.get("timestamps_s", ())) == len(clip):
            return FaceTrack.from_arrays(arrays)
        track = video_face_track(source, settings=settings, video=clip, cache=False)
        store.put(key, track.to_arrays())
        return track

    def tracker_settings(self):
        """The face tracker's settings for this processor's detector (live sessions track with them too)."""
        from dataclasses import replace

        from mllm.face import TrackerSettings

        default = TrackerSettings()
        return replace(default, detector=replace(default.detector, detector=self.face_detector))

    def _clip_text(self, clip, track, media: _Media, limits: _Limits) -> str:
        lines = []
        for i in range(len(clip)):
            points = track.landmarks_68[i] if track.has_face[i] else None
            tokens = self._add_frame(media, clip.frames[i], points)
            lines.append(f"Frame {i + 1} at {clip.timestamps_s[i]:.1f}s: {tokens}")
        text = "\n".join(lines)
        if clip.audio is not None:
            text += "\nAudio: " + self._add_audio(media, clip.audio.samples, clip.source, limits.seconds)
        return text

    def _crop_frames(self, part: dict, frames, media: _Media, limits: _Limits) -> str:
        """Aligned face crops (ABAW's cropped_aligned): landmarks with the whole crop as the face box, and, when the
        part names the source video, its audio over the frames' span (frame n plays at (n - 1) / fps)."""
        from mllm.face.crops import crop_landmarks

        if not isinstance(frames, list | tuple) or not frames:
            refuse("frames must be a non-empty list of image paths")
        if not all(isinstance(f, str | os.PathLike) and os.fspath(f) for f in frames):
            refuse("frames must be image paths (strings)")
        frames = [limits.access.local(os.fspath(f)) for f in frames]  # every name checked before any is read
        video = part.get("video", part.get("video_url", ""))
        has_video = video not in ("", None)
        numbers = None
        if "frame_indices" in part:
            numbers = frame_numbers(part["frame_indices"], len(frames))
        elif has_video:
            refuse("frames with a video need frame_indices to place them on the video's clock")
        fps, info, source = None, None, None
        positions = list(range(len(frames)))
        if has_video:
            source = self._source(part, "video", limits)
            info = probe_video(source)
            times = frame_times(source, numbers, info)
            fps = info.average_fps
            positions = [i for i in positions if times[i] < times[0] + limits.seconds]
        lines = []
        for k, i in enumerate(positions[j] for j in spread_positions(len(positions), limits.frames)):
            path = frames[i]
            self._check_stop(limits)
            rgb = load_image(path)
            points = crop_landmarks(path, image=rgb, cache=self.face_cache)
            tokens = self._add_frame(media, rgb, points)
            when = f" at {(numbers[i] - 1) / fps:.1f}s" if fps is not None else ""
            lines.append(f"Frame {k + 1}{when}: {tokens}")
        text = "\n".join(lines)
        if info is not None and info.has_audio_track:
            first, last = numbers[positions[0]], numbers[positions[-1]]
            audio = load_audio(source, start_s=(first - 1) / fps, end_s=last / fps)
            text += "\nAudio: " + self._add_audio(media, audio.samples, audio.source, limits.seconds)
        return text

    # ------------------------------------------------------------------------------------------------------------
    # What a request may name and cost

    @staticmethod
    def _source(part: dict, kind: str, limits: _Limits):
        """The media a part names; a path only where the call's `MediaAccess` lets it name local files."""
        source = part_source(part, kind)
        return limits.access.local(source) if isinstance(source, str) else source

    @staticmethod
    def _count_parts(messages, limits: _Limits) -> None:
        """Too many media parts are refused before the first is read (each may cost a decode and a face search)."""
        most = limits.access.max_parts
        if most is None:
            return
        parts = sum(
            1
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            for part in m["content"]
            if isinstance(part, dict) and PART_MEDIA.get(part.get("type"), "text") != "text"
        )
        if parts > most:
            refuse(f"a conversation may hold at most {most} media parts")

    @staticmethod
    def _check_stop(limits: _Limits) -> None:
        if limits.should_stop is not None and limits.should_stop():
            raise ProcessingStopped("stopped by the caller")

    def _budget(self, media: _Media, limits: _Limits, what: str) -> _Limits:
        """Count a media part against the call's `MediaAccess` bounds, before it is read: the part itself, and the
        images it may add (a video's frames are cut to what the conversation has left)."""
        from dataclasses import replace

        self._check_stop(limits)
        access = limits.access
        media.parts += 1
        if access.max_parts is not None and media.parts > access.max_parts:
            refuse(f"a conversation may hold at most {access.max_parts} media parts")
        if access.max_images is None or what == "audio":
            return limits
        left = access.max_images - len(media.pixel_values)
        if left < 1:
            refuse(f"a conversation's media may hold at most {access.max_images} images and video frames in all")
        return replace(limits, frames=min(limits.frames, left))

    # ------------------------------------------------------------------------------------------------------------
    # Conversations -> text with placeholders

    def _render_part(self, part: dict, role: str, media: _Media, limits: _Limits) -> str:
        kind = part.get("type")
        if kind not in PART_MEDIA:
            refuse(f"unknown content part type {kind!r}; valid: {', '.join(PART_MEDIA)}")
        what = PART_MEDIA[kind]
        unknown = set(part) - PART_KEYS[what] - {"type"}
        if unknown:
            refuse(f"unknown key(s) {sorted(unknown)} in a {kind} part; valid: {sorted(PART_KEYS[what])}")
        if what == "text":
            text = part.get("text")
            if not isinstance(text, str):
                refuse(f"a text part needs 'text' as a string, got {type(text).__name__}")
            return checked_text(text)
        if role != "user":
            refuse(f"media parts belong in user messages, not {role} messages")
        limits = self._budget(media, limits, what)
        if what == "image":
            return self._image(self._source(part, "image", limits), media)
        if what == "video":
            return self._video(part, media, limits)
        return self._audio(part, media, limits)

    def _render_message(self, message, where: str, media: _Media, limits: _Limits) -> dict:
        if not isinstance(message, dict):
            refuse(f"{where}: a message must be a dict with 'role' and 'content', got {type(message).__name__}")
        unknown = set(message) - {"role", "content"}
        if unknown:
            refuse(f"{where}: unknown key(s) {sorted(unknown)} in a message; valid: role, content")
        role = message.get("role")
        if role not in ROLES:
            got = "no 'role'" if "role" not in message else f"role {role!r}"
            refuse(f"{where}: {got}; a message's role is one of {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            try:
                return {"role": role, "content": checked_text(content)}
            except ProcessorInputError as exc:
                raise ProcessorInputError(f"{where}: {exc}") from None
        if not isinstance(content, list | tuple):
            got = "no 'content'" if "content" not in message else f"content of type {type(content).__name__}"
            refuse(f"{where}: {got}; content is a string or a list of content parts")
        pieces = []
        for index, part in enumerate(content):
            at = f"{where}, content part {index}"
            if not isinstance(part, dict):
                refuse(f"{at}: a content part must be a dict like {{'type': 'text', 'text': ...}}, got {part!r}"[:300])
            at += f" ({part.get('type')})"
            try:
                pieces.append(self._render_part(part, role, media, limits))
            except MediaError as exc:
                raise exc.located(at) from exc
            except ValueError as exc:
                # The refusal keeps its kind (a MediaNotAllowedError is a 403 for a server), now saying where.
                kind = type(exc) if isinstance(exc, ProcessorInputError) else ProcessorInputError
                raise kind(f"{at}: {exc}") from exc
        return {"role": role, "content": "\n".join(p for p in pieces if p)}

    def _request_limits(self, limits, access: MediaAccess = UNRESTRICTED, should_stop=None) -> _Limits:
        limits = {} if limits is None else limits
        if not isinstance(limits, dict):
            refuse(f"limits take positive 'frames' and 'seconds', got {limits!r}")
        frames, seconds = limits.get("frames", self.frames_per_clip), limits.get("seconds", self.max_audio_seconds)
        unknown = set(limits) - {"frames", "seconds"}
        bad_frames = not is_number(frames, integral=True) or frames < 1
        bad_seconds = not is_number(seconds) or not seconds > 0
        if unknown or bad_frames or bad_seconds or not math.isfinite(seconds):
            refuse(f"limits take positive 'frames' (an integer) and 'seconds', got {limits}")
        return _Limits(
            frames=min(int(frames), self.max_frames),
            seconds=min(float(seconds), self.max_audio_seconds),
            access=access,
            should_stop=should_stop,
        )

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
        access: MediaAccess = UNRESTRICTED,
        should_stop=None,
    ) -> dict:
        """Tokenise a batch of conversations. `return_labels`: labels are the assistant turns' tokens (the rest
        -100) and no generation prompt is added. `limits`: {"frames": N, "seconds": S} for this request.
        `access`: what each conversation's media may name and cost (`MediaAccess`; servers restrict it).
        `should_stop`: a callable checked before each media part and frame; when true, `ProcessingStopped`."""
        conversations = as_conversations(conversations)
        request = self._request_limits(limits, access, should_stop)
        if padding_side not in ("left", "right"):
            refuse(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        ids, labels, all_media = [], [], _Media()
        for c, messages in enumerate(conversations):
            self._count_parts(messages, request)
            media = _Media()
            rendered = [
                self._render_message(m, f"conversation {c}, message {i}", media, request)
                for i, m in enumerate(messages)
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

    def window(self, frames: list, audio: np.ndarray | None, question: str, limits: dict | None = None) -> dict:
        """One window of a live stream as one user turn, batched as `__call__` batches a conversation: `frames` are
        (seconds since the window began, RGB array, 68 landmarks or None), of which `limits["frames"]` are spread
        over the window as a video part's are, then the window's audio (16 kHz mono, when long enough for the
        audio encoder), then `question`. The landmarks come from the caller's own tracking (a live session follows
        the face from frame to frame instead of detecting it afresh in every window)."""
        request = self._request_limits(limits)
        if not frames:
            refuse("a live window needs at least one frame")
        media, lines = _Media(), []
        for k, i in enumerate(spread_positions(len(frames), request.frames)):
            t, rgb, points = frames[i]
            lines.append(f"Frame {k + 1} at {t:.1f}s: {self._add_frame(media, image_from_array(rgb), points)}")
        if audio is not None and len(audio) >= self.min_audio_samples:
            samples = audio_from_array(np.asarray(audio, dtype=np.float32))
            lines.append("Audio: " + self._add_audio(media, samples, "<live>", request.seconds))
        lines.append(checked_text(question))
        text = self._render([{"role": "user", "content": "\n".join(lines)}], True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._collate([ids], None, media, "left")

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


_MEDIA_CAT_KEYS = ("pixel_values", "image_landmarks", "image_has_face", "audio_lengths", "audio_token_counts")


def concat_media(rows: list[dict], device=None) -> dict:
    """The media of several samples (each as our processor returns them for one conversation) as one batch's."""
    out = {}
    for key in _MEDIA_CAT_KEYS:
        parts = [r[key] for r in rows if key in r]
        if parts:
            out[key] = torch.cat(parts)
    audio = [r["audio_values"] for r in rows if "audio_values" in r]
    if audio:
        longest = max(a.shape[1] for a in audio)
        out["audio_values"] = torch.cat([torch.nn.functional.pad(a, (0, longest - a.shape[1])) for a in audio])
    return {k: v.to(device) for k, v in out.items()} if device is not None else out
