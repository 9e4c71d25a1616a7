"""The content parts of a request, checked and resolved before any media is read.

A batch is a list of conversations (OpenAI-style chat messages); each message's content is a list of parts
(`text`, `image` / `image_url`, `video` / `video_url`, `audio` / `audio_url` / `input_audio`). Anything that cannot
be used exactly as given is refused with `ProcessorInputError` (a ValueError); `EmoReasonProcessor` prefixes the
message with where it is (conversation, message, content part).
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlparse

import numpy as np

from mllm.config import AUDIO_PLACEHOLDERS, IMAGE_CONTEXT, IMAGE_END, IMAGE_START

ROLES = ("system", "user", "assistant")
# Content part type -> the media it carries, and the keys such a part may hold besides "type".
PART_MEDIA = {
    "text": "text",
    "image": "image",
    "image_url": "image",
    "video": "video",
    "video_url": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
}
PART_KEYS = {
    "text": {"text"},
    "image": {"image", "image_url"},
    "video": {"video", "video_url", "frames", "frame_indices", "start_s", "end_s"},
    "audio": {"audio", "audio_url", "input_audio", "start_s", "end_s"},
}
# Ours, and the Qwen-VL bases' own (their images are delimited by these): text may not forge media.
QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
PLACEHOLDER_TOKENS = (IMAGE_START, IMAGE_END, IMAGE_CONTEXT, *AUDIO_PLACEHOLDERS, *QWEN_VISION_TOKENS)


class ProcessorInputError(ValueError):
    """A conversation the processor cannot use as given. The message says where: conversation, message, part."""


def refuse(reason: str) -> NoReturn:
    raise ProcessorInputError(reason)


class MediaNotAllowedError(ProcessorInputError):
    """A conversation names a local file its caller may not read (`MediaAccess.local_dirs`)."""


class ProcessingStopped(Exception):
    """The caller stopped a conversation's processing (its request timed out, or its client left)."""


@dataclass(frozen=True)
class MediaAccess:
    """What the media of one conversation may name and cost, for callers that process other people's requests.

    `local_dirs`: the folders whose files a conversation may name by path (`file://` URLs, plain paths, a video
    part's `frames` list: every key that names a file); None lets it name any file (the user's own commands).
    `max_parts`: media parts per conversation; `max_images`: images and video frames in all of them together.
    """

    local_dirs: tuple[Path, ...] | None = None
    max_parts: int | None = None
    max_images: int | None = None

    def local(self, path: str) -> str:
        """`path` as it may be read, or refused. The refusal is the same whether or not the file exists, so it
        tells a client nothing about the server's files."""
        if self.local_dirs is None:
            return path
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(Path(d).resolve()) for d in self.local_dirs):
            raise MediaNotAllowedError("server-local files are not allowed here (send the media as a base64 data: "
                                       "URL, or start the server with --allow-media-dir)")  # fmt: skip
        return str(resolved)


UNRESTRICTED = MediaAccess()


def url_source(url: str) -> bytes | str:
    """A path, a `file://` URL or a base64 `data:` URL -> a path or bytes."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            refuse("a data: URL must be base64 (data:<type>;base64,<data>)")
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            refuse("malformed base64 data URL in a media part")
        if not data:
            refuse("the data: URL holds no data")
        return data
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            refuse(f"file:// URLs must name a local file, got host {parsed.netloc!r}")
        return unquote(parsed.path)
    if "://" in url:
        refuse(f"only local paths, file:// and data: URLs are accepted, got {url[:40]!r}")
    if not url:
        refuse("names no media (an empty string)")
    return url


def part_source(part: dict, kind: str):
    """The media a content part names: a path, bytes, or (images, audio) an in-memory array."""
    url_key = f"{kind}_url"
    keys = [k for k in (kind, url_key, "input_audio" if kind == "audio" else None) if k and k in part]
    if len(keys) > 1:
        refuse(f"give one of {keys}, not several")
    if not keys:
        refuse(f"content part of type {part.get('type')!r} has no {kind!r} or {url_key!r} field")
    key = keys[0]
    value = part[key]
    if key == "input_audio":
        if not isinstance(value, dict) or not isinstance(value.get("data"), str):
            refuse("input_audio must be {'data': <base64>, 'format': 'wav' | 'mp3' | ...}")
        try:
            data = base64.b64decode(value["data"], validate=True)
        except ValueError:
            refuse("input_audio data is not valid base64")
        if not data:
            refuse("input_audio holds no data")
        return data
    if key == url_key:
        if isinstance(value, dict):
            extra = set(value) - {"url", "detail"}
            if extra:
                refuse(f"unknown key(s) {sorted(extra)} in {url_key}; it takes 'url' (and 'detail')")
            if "url" not in value:
                refuse(f"{url_key} has no 'url'")
            value = value["url"]
        if not isinstance(value, str):
            refuse(f"{url_key} must be a URL string or {{'url': <string>}}, got {type(value).__name__}")
        return url_source(value)
    if isinstance(value, str):
        return url_source(value)
    if isinstance(value, os.PathLike):
        return url_source(os.fspath(value))
    if isinstance(value, bytes | bytearray):
        if not value:
            refuse("names no media (empty bytes)")
        return bytes(value)
    if kind != "video" and isinstance(value, np.ndarray):
        return value
    if kind == "image" and type(value).__module__.startswith("PIL."):
        return value
    arrays = ", a numpy array" if kind == "audio" else (", a numpy array or a PIL image" if kind == "image" else "")
    article = "an" if kind in ("image", "audio") else "a"
    refuse(f"{article} {kind} part takes a path, a file:// or data: URL, bytes{arrays}; got {type(value).__name__}")


def seconds_field(part: dict, key: str) -> float | None:
    value = part.get(key)
    if value is None:
        return None
    if not is_number(value) or not math.isfinite(value) or value < 0:
        refuse(f"{key} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def is_number(value, integral: bool = False) -> bool:
    """A real number (numpy's included), not a bool."""
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, Integral if integral else Real)


def frame_numbers(value, count: int | None) -> np.ndarray:
    """`frame_indices`: 1-based frame numbers, strictly increasing (and as many as `frames`, when given)."""
    if not isinstance(value, list | tuple) or not value:
        refuse(f"frame_indices must be a non-empty list of frame numbers, got {value!r}"[:200])
    if not all(is_number(v, integral=True) for v in value):
        refuse("frame_indices must be integers (1-based frame numbers)")
    try:
        numbers = np.asarray(value, dtype=np.int64)
    except OverflowError:
        refuse("frame_indices hold a number too large for a frame number")
    if numbers.min() < 1 or (np.diff(numbers) <= 0).any():
        refuse("frame_indices must be 1-based frame numbers in increasing order")
    if count is not None and len(numbers) != count:
        refuse(f"frames lists {count} images but frame_indices has {len(numbers)} numbers")
    return numbers


def checked_text(text: str) -> str:
    found = [t for t in PLACEHOLDER_TOKENS if t in text]
    if found:
        refuse(f"text may not contain the placeholder tokens {found}; media go in image, video or audio parts")
    return text


def as_conversations(conversations) -> list:
    """A batch of conversations, or one conversation (a list of message dicts), as a list of conversations."""
    if not isinstance(conversations, list | tuple):
        refuse(
            "conversations must be a list of conversations (each a list of messages) or one conversation, "
            f"got {type(conversations).__name__}"
        )
    if not conversations:
        refuse("no conversations to process")
    if isinstance(conversations[0], dict):
        conversations = [conversations]
    for c, messages in enumerate(conversations):
        if not isinstance(messages, list | tuple) or not messages:
            refuse(f"conversation {c}: a conversation is a non-empty list of messages, got {messages!r}"[:300])
    return list(conversations)


def frame_times(source, numbers: np.ndarray, info) -> np.ndarray:
    """When 1-based frame numbers play in a video (frame n at (n - 1) / fps); numbers past its end are refused."""
    name = source if isinstance(source, str) else "<bytes>"
    if not info.average_fps:
        refuse(f"{name}: declares no frame rate, so frame_indices cannot be placed in time")
    times = (numbers - 1) / info.average_fps
    if info.duration_s is not None and times[-1] >= info.duration_s:
        refuse(
            f"{name}: frame_indices reach frame {numbers[-1]} ({times[-1]:.2f}s) but the video lasts "
            f"{info.duration_s:.2f}s (about {round(info.duration_s * info.average_fps)} frames)"
        )
    return times


def spread_positions(n: int, k: int) -> list[int]:
    """k positions spread evenly over n items (the centre of each of k equal parts); all of them when n <= k."""
    if n <= k:
        return list(range(n))
    return [int((j + 0.5) * n / k) for j in range(k)]
