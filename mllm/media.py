"""Decode media into arrays: RGB frames with timestamps, and 16 kHz mono float32 audio on the same clock.

Everything goes through PyAV, which carries FFmpeg in its wheel, and Pillow for still images (ARCHITECTURE.md,
decision 5). Every failure is a typed `MediaError` naming the file; nothing partial is returned as if complete.
`MediaLimits` bound what a call may decode (bytes, the decoded time window, pixels per frame, bytes of frames
held), checked from what the file declares before decoding and again while decoding.

    >>> clip = load_video("talk.mp4", num_frames=8)          # doctest: +SKIP
    >>> clip.frames.shape, clip.timestamps_s[:2], clip.audio.samples.dtype
    ((8, 360, 640, 3), array([0.3125, 0.9375]), dtype('float32'))
"""

from __future__ import annotations

import errno
import io
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

AUDIO_SAMPLE_RATE = 16_000
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv"})
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus"})
# Threads FFmpeg decodes a video with: 0 lets it choose (about one per core). A process among several that share
# the cores (`emoreason data faces --workers N`) sets its share of them.
DECODE_THREADS = 0

# Leading bytes of the containers we read. A file that starts like one of these but does not open is corrupt
# (for example truncated); a file that starts like none of them is unsupported.
_MAGIC = (
    (4, b"ftyp"),  # mp4 / mov / m4a: offset 4
    (0, b"RIFF"),  # avi / wav / webp
    (0, b"\x1a\x45\xdf\xa3"),  # mkv / webm
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"\xff\xfb"),
    (0, b"\xff\xf3"),
    (0, b"\xff\xf1"),  # mp3 / adts aac frame sync
    (0, b"\x89PNG"),
    (0, b"\xff\xd8\xff"),  # jpeg
)


class MediaError(Exception):
    """A media file that cannot be used. `source` names the file (or `<bytes>`, `<array>`); `where` optionally
    names the request part it came from."""

    def __init__(self, source: str, reason: str, where: str = ""):
        self.source = source
        self.reason = reason
        self.where = where
        super().__init__(f"{where}: {source}: {reason}" if where else f"{source}: {reason}")

    def located(self, where: str) -> MediaError:
        """The same error (same type) with the request part it came from named first."""
        return type(self)(self.source, self.reason, where)


class MediaNotFoundError(MediaError, FileNotFoundError):
    pass


class UnsupportedMediaError(MediaError):
    pass


class CorruptMediaError(MediaError):
    pass


class EmptyMediaError(MediaError):
    """Decodes, but holds no frames (or no samples) in the requested window."""


class MediaTooLargeError(MediaError):
    pass


class MediaTooShortError(MediaError, ValueError):
    """Holds too little for the model (audio shorter than the audio encoder's receptive field)."""


class MediaArrayError(MediaError, ValueError):
    """An in-memory array (or picture) that is not an image or audio clip we can use as it is."""


@dataclass(frozen=True)
class MediaLimits:
    """Refuse media beyond these bounds before decoding it (oversized uploads, decompression bombs).

    `max_bytes`: size of the file. `max_duration_s`: length of the time window decoded (the whole file when no
    window is asked for), so a short window of a long file is fine. `max_pixels`: pixels of an image or of one
    video frame, checked from the declared size before decoding. `max_decoded_bytes`: bytes of RGB frames one
    `load_video` call may hold (frames x height x width x 3).
    """

    max_bytes: int = 2 * 1024**3
    max_duration_s: float = 600.0
    max_pixels: int = 8192 * 8192
    max_decoded_bytes: int = 4 * 1024**3

    def __post_init__(self):
        values = (self.max_bytes, self.max_duration_s, self.max_pixels, self.max_decoded_bytes)
        if not all(isinstance(v, int | float) and v > 0 for v in values):  # NaN fails `v > 0` too
            raise ValueError(f"MediaLimits must be positive, got {self}")


DEFAULT_LIMITS = MediaLimits()

MediaSource = str | os.PathLike | bytes


@dataclass
class Audio:
    """Mono float32 samples at `sample_rate`; `start_s` is the time of the first sample on the media's clock."""

    samples: np.ndarray
    sample_rate: int = AUDIO_SAMPLE_RATE
    start_s: float = 0.0
    source: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class Video:
    """Sampled RGB frames (N, H, W, 3) uint8, upright, with their presentation times in seconds.

    `audio` is the audio track cut to the same window, or None with `has_audio_track` False when the file has none.
    """

    frames: np.ndarray
    timestamps_s: np.ndarray
    source: str
    duration_s: float
    average_fps: float
    window_s: tuple[float, float]
    audio: Audio | None = None
    has_audio_track: bool = False
    rotation_degrees: int = 0
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.frames)


# ----------------------------------------------------------------------------------------------------------------
# Opening


def _name(source: MediaSource) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _check_file(source: MediaSource, limits: MediaLimits) -> None:
    name = _name(source)
    if isinstance(source, bytes | bytearray):
        size = len(source)
    else:
        path = Path(source)
        if not path.exists():
            raise MediaNotFoundError(name, "file not found")
        if not path.is_file():
            raise UnsupportedMediaError(name, "not a regular file")
        size = path.stat().st_size
    if size == 0:
        raise EmptyMediaError(name, "file is empty (0 bytes)")
    if size > limits.max_bytes:
        raise MediaTooLargeError(name, f"file is {size} bytes, over the limit of {limits.max_bytes} bytes")


def _head(source: MediaSource, n: int = 16) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source[:n])
    with open(source, "rb") as fh:
        return fh.read(n)


def _looks_like_media(head: bytes) -> bool:
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _MAGIC)


def _raise_if_out_of_memory(exc: Exception) -> None:
    """FFmpeg reports a failed allocation as an error code: that is the machine's memory, not a corrupt file."""
    if isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM:
        raise MemoryError(f"out of memory while decoding ({exc})") from exc


def _open_container(source: MediaSource) -> av.container.InputContainer:
    name = _name(source)
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source), "r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        _raise_if_out_of_memory(exc)
        head = _head(source)
        if _looks_like_media(head):
            raise CorruptMediaError(name, f"corrupt or truncated media ({exc})") from exc
        what = "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "unknown bytes"
        raise UnsupportedMediaError(
            name, f"not a recognised image, video or audio format (starts with {what})"
        ) from exc


def _container_duration(container, stream) -> float | None:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _container_t0(container) -> float:
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _window(name: str, start_s: float | None, end_s: float | None, duration: float | None) -> tuple[float, float]:
    start = 0.0 if start_s is None else float(start_s)
    end = float("inf") if end_s is None else float(end_s)
    if not np.isfinite(start) or np.isnan(end):
        raise ValueError(f"{name}: time window [{start_s}, {end_s}] must be finite numbers of seconds")
    if duration is not None:
        end = min(end, duration)
    if start < 0 or end <= start:
        raise ValueError(f"{name}: empty or negative time window [{start_s}, {end_s}] (media lasts {duration}s)")
    return start, end


def _check_window(name: str, start: float, end: float, duration: float | None, limits: MediaLimits) -> None:
    """The limit on duration bounds what is decoded: the window, or the whole file when no window is asked for.
    An unknown end is checked while decoding."""
    if not np.isfinite(end) or end - start <= limits.max_duration_s:
        return
    if start == 0 and duration is not None and end >= duration:
        raise MediaTooLargeError(
            name,
            f"duration {duration:.1f}s is over the limit of {limits.max_duration_s:.1f}s "
            "(ask for a shorter window with start_s/end_s)",
        )
    raise MediaTooLargeError(
        name,
        f"the window [{start:.2f}s, {end:.2f}s) lasts {end - start:.1f}s, over the limit of "
        f"{limits.max_duration_s:.1f}s",
    )


def _past_limit(name: str, what: str, t: float, start: float, limits: MediaLimits) -> None:
    if t - start > limits.max_duration_s:
        raise MediaTooLargeError(
            name, f"{what} runs past the limit of {limits.max_duration_s:.1f}s decoded from {start:.2f}s"
        )


# ----------------------------------------------------------------------------------------------------------------
# Images


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Alpha composited on white, 16-bit grayscale scaled to 8 bits, everything else converted to RGB."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(canvas, rgba)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(im, dtype=np.float64)
        peak = arr.max() if arr.max() > 255 else 255.0
        im = Image.fromarray((arr / peak * 255).round().astype(np.uint8))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def load_image(source: MediaSource, limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an image to upright RGB uint8 (H, W, 3): EXIF orientation applied, alpha composited on white,
    grayscale and palette images expanded."""
    name = _name(source)
    _check_file(source, limits)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source) as im:
            if im.width * im.height > limits.max_pixels:
                raise MediaTooLargeError(
                    name, f"{im.width}x{im.height} pixels is over the limit of {limits.max_pixels}"
                )
            im.load()
            return _pil_to_rgb(ImageOps.exif_transpose(im))
    except MediaError:
        raise
    except UnidentifiedImageError as exc:
        if _looks_like_media(_head(source)):
            raise CorruptMediaError(name, "corrupt image") from exc
        raise UnsupportedMediaError(name, "not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise MediaTooLargeError(name, str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptMediaError(name, f"corrupt or truncated image ({exc})") from exc


def image_from_array(image, limits: MediaLimits = DEFAULT_LIMITS, name: str = "<array>") -> np.ndarray:
    """An in-memory image (numpy array or PIL picture) as RGB uint8 (H, W, 3), converted as files are.

    Accepted arrays: (H, W) or (H, W, 1) grayscale, expanded to RGB; (H, W, 3) RGB; (H, W, 4) RGBA, composited on
    white. uint8 as it is; other integer types holding only 0-255; floats in [0, 1], scaled by 255 and rounded.
    Refused: NaN or infinite values, floats outside [0, 1], integers outside 0-255, other shapes (channels first
    among them), empty arrays, more pixels than `limits.max_pixels`.
    """
    if isinstance(image, Image.Image):
        if image.width * image.height > limits.max_pixels:
            raise MediaTooLargeError(
                name, f"{image.width}x{image.height} pixels is over the limit of {limits.max_pixels}"
            )
        return _pil_to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise MediaArrayError(name, f"an image must be a numpy array or a PIL image, got {type(image).__name__}")
    shape = image.shape
    if image.ndim not in (2, 3) or (image.ndim == 3 and shape[2] not in (1, 3, 4)):
        raise MediaArrayError(
            name, f"image array of shape {shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), channels last"
        )
    if image.size == 0:
        raise MediaArrayError(name, f"image array of shape {shape} is empty")
    if shape[0] * shape[1] > limits.max_pixels:
        raise MediaTooLargeError(name, f"{shape[1]}x{shape[0]} pixels is over the limit of {limits.max_pixels}")
    kind = image.dtype.kind
    if kind == "f":
        if not np.isfinite(image).all():
            raise MediaArrayError(name, "image array holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise MediaArrayError(
                name, f"float image values must lie in [0, 1] (got [{low:.3g}, {high:.3g}]); pass uint8 for 0-255"
            )
        image = np.round(image.astype(np.float64) * 255).astype(np.uint8)
    elif kind in "iu":
        if image.dtype != np.uint8:
            low, high = int(image.min()), int(image.max())
            if low < 0 or high > 255:
                raise MediaArrayError(name, f"integer image values must lie in 0-255 (got {low}-{high})")
            image = image.astype(np.uint8)
    else:
        raise MediaArrayError(name, f"image array of dtype {image.dtype}: expected uint8 or float in [0, 1]")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if image.shape[2] == 4:
        return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(image), "RGBA"))
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------------------------------------
# Audio


# Decoded audio may end this much before the declared end (encoder priming and padding) without being truncated.
AUDIO_END_SLACK_S = 0.25
# Audio arrays: at most this many channels; a 2-D array is (channels, samples) or (samples, channels).
MAX_AUDIO_CHANNELS = 8


class _AudioCollector:
    """Resamples decoded audio frames to 16 kHz mono float32 and remembers when the first sample plays and where
    the last decoded frame ends."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        self.chunks: list[np.ndarray] = []
        self.first_s: float | None = None
        self.decoded_end_s: float | None = None

    def add(self, frame) -> None:
        if frame.time is not None:
            if self.first_s is None:
                self.first_s = frame.time - self.t0
            if frame.sample_rate:
                end = frame.time - self.t0 + frame.samples / frame.sample_rate
                self.decoded_end_s = end if self.decoded_end_s is None else max(self.decoded_end_s, end)
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def check_complete(self, source: str, declared_end_s: float | None, window_end: float) -> None:
        """Truncated audio (decoding stops well before the end the file declares) is corrupt, never padded."""
        if declared_end_s is None or self.decoded_end_s is None:
            return
        expected = min(declared_end_s, window_end)
        if self.decoded_end_s < expected - AUDIO_END_SLACK_S:
            raise CorruptMediaError(
                source,
                f"truncated: audio stops at {self.decoded_end_s:.2f}s, the file declares {declared_end_s:.2f}s",
            )

    def finish(self, start: float, end: float, source: str) -> Audio:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        samples = np.concatenate(self.chunks).astype(np.float32) if self.chunks else np.zeros(0, np.float32)
        if not np.isfinite(samples).all():
            raise CorruptMediaError(source, "audio holds NaN or infinite samples")
        first = self.first_s if self.first_s is not None else 0.0
        # Cut to [start, end) on the media clock; pad with silence where the track starts late or ends early.
        lead = int(round((start - first) * AUDIO_SAMPLE_RATE))
        if lead < 0:
            samples = np.concatenate([np.zeros(-lead, np.float32), samples])
            lead = 0
        samples = samples[lead:]
        if np.isfinite(end):
            want = int(round((end - start) * AUDIO_SAMPLE_RATE))
            samples = samples[:want] if len(samples) >= want else np.pad(samples, (0, want - len(samples)))
        return Audio(samples=np.ascontiguousarray(samples), start_s=start, source=source)


def _stream_end(container, stream, t0: float) -> float | None:
    """Where a stream declares it ends, on the media clock (None when it declares no duration)."""
    if stream.duration is None or stream.time_base is None:
        return None
    begin = float(stream.start_time * stream.time_base) - t0 if stream.start_time is not None else 0.0
    return begin + float(stream.duration * stream.time_base)


def _check_wav_header(source: MediaSource, name: str) -> None:
    """A WAV header declares the size of its audio data: a file holding less was cut short. (FFmpeg quietly
    shortens the duration to what is there, so the decoded length alone cannot tell.)"""
    if isinstance(source, bytes | bytearray):
        size = len(source)
        read = lambda offset, n: bytes(source[offset : offset + n])  # noqa: E731
        fh = None
    else:
        size = Path(source).stat().st_size
        fh = open(source, "rb")  # noqa: SIM115 (closed below)

        def read(offset, n):
            fh.seek(offset)
            return fh.read(n)

    try:
        head = read(0, 12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        offset = 12
        for _ in range(64):  # the data chunk follows a few header chunks
            chunk = read(offset, 8)
            if len(chunk) < 8:
                return
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = size - offset - 8
                # Streaming writers leave 0 or 0xFFFFFFFF: size unknown, nothing to check.
                if declared not in (0, 0xFFFFFFFF) and declared > present:
                    raise CorruptMediaError(
                        name, f"truncated: the WAV header declares {declared} bytes of audio, the file holds {present}"
                    )
                return
            offset += 8 + declared + (declared & 1)
    finally:
        if fh is not None:
            fh.close()


def load_audio(
    source: MediaSource,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Audio:
    """The audio track of an audio or video file as 16 kHz mono float32, cut to [start_s, end_s).

    A file whose audio stops well before the duration it declares is truncated (`CorruptMediaError`), not padded.
    """
    name = _name(source)
    _check_file(source, limits)
    _check_wav_header(source, name)
    with _open_container(source) as container:
        if not container.streams.audio:
            raise EmptyMediaError(name, "has no audio track")
        stream = container.streams.audio[0]
        duration = _container_duration(container, stream)
        start, end = _window(name, start_s, end_s, duration)
        _check_window(name, start, end, duration, limits)
        t0 = _container_t0(container)
        collector = _AudioCollector(t0)
        if start > 0:
            container.seek(int((start + t0) / stream.time_base), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                if frame.time is not None and frame.time - t0 >= end:
                    break
                collector.add(frame)
                if frame.time is not None:
                    _past_limit(name, "audio", frame.time - t0, start, limits)
        except av.error.FFmpegError as exc:
            _raise_if_out_of_memory(exc)
            raise CorruptMediaError(name, f"audio stream fails to decode ({exc})") from exc
        if not collector.chunks:
            raise EmptyMediaError(name, f"no audio samples in [{start:.2f}s, {end:.2f}s)")
        collector.check_complete(name, _stream_end(container, stream, t0), end)
        if not np.isfinite(end):
            decoded = sum(len(c) for c in collector.chunks) / AUDIO_SAMPLE_RATE
            end = collector.decoded_end_s if (collector.decoded_end_s or 0) > start else start + decoded
        return collector.finish(start, end, name)


def audio_from_array(samples, name: str = "<array>") -> np.ndarray:
    """16 kHz audio held in memory as mono float32.

    (N,) is mono; (channels, N) or (N, channels) with at most 8 channels is mixed down by averaging the channels.
    Floats are taken as they are; int16 and int32 PCM are scaled to [-1, 1); uint8 PCM is centred on 128.
    Refused: NaN or infinite samples, empty arrays, other dtypes and shapes.
    """
    if not isinstance(samples, np.ndarray):
        raise MediaArrayError(name, f"audio must be a numpy array of 16 kHz samples, got {type(samples).__name__}")
    if samples.ndim == 2:
        rows, cols = samples.shape
        if rows <= MAX_AUDIO_CHANNELS and cols > rows:
            channel_axis = 0
        elif cols <= MAX_AUDIO_CHANNELS and rows > cols:
            channel_axis = 1
        else:
            raise MediaArrayError(
                name,
                f"audio array of shape {samples.shape}: expected (samples,), (channels, samples) or "
                f"(samples, channels) with at most {MAX_AUDIO_CHANNELS} channels",
            )
    elif samples.ndim != 1:
        raise MediaArrayError(name, f"audio array of shape {samples.shape}: expected (samples,) or 2-D multichannel")
    if samples.size == 0:
        raise MediaArrayError(name, "audio array is empty")
    if samples.dtype.kind == "f":
        mono = samples.astype(np.float32)
    elif samples.dtype in (np.int16, np.int32):
        mono = (samples.astype(np.float64) / (1 << (8 * samples.dtype.itemsize - 1))).astype(np.float32)
    elif samples.dtype == np.uint8:
        mono = ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    else:
        raise MediaArrayError(
            name, f"audio array of dtype {samples.dtype}: expected float, int16, int32 or uint8 PCM samples"
        )
    if not np.isfinite(mono).all():
        raise MediaArrayError(name, "audio holds NaN or infinite samples")
    if mono.ndim == 2:
        mono = mono.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(mono)


# ----------------------------------------------------------------------------------------------------------------
# Video


def _targets(start: float, end: float, num_frames: int | None, fps: float | None, at_s=None) -> np.ndarray | None:
    """Times to sample at: N centred points over the window, a fixed rate, or given times; None keeps every
    frame."""
    if at_s is not None:
        return np.asarray(at_s, dtype=np.float64)
    if num_frames is not None:
        step = (end - start) / num_frames
        return start + (np.arange(num_frames) + 0.5) * step
    if fps is not None:
        return np.arange(start, end, 1.0 / fps)
    return None


def _upright(frame) -> tuple[np.ndarray, int]:
    rgb = frame.to_ndarray(format="rgb24")
    rotation = int(round((frame.rotation or 0) / 90.0)) % 4  # counter-clockwise quarter turns to display upright
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation))
    return rgb, rotation * 90


def _check_sampling(num_frames: int | None, fps: float | None, at_s=None) -> None:
    if sum(x is not None for x in (num_frames, fps, at_s)) > 1:
        raise ValueError("give num_frames or fps (or at_s), not more than one")
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1):
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames}")
    if fps is not None and not (isinstance(fps, int | float | np.number) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    if at_s is not None:
        times = np.asarray(at_s, dtype=np.float64)
        if times.ndim != 1 or len(times) == 0 or not np.isfinite(times).all() or (np.diff(times) < 0).any():
            raise ValueError(f"at_s must be a non-empty, non-decreasing list of finite times, got {at_s}")


def _check_frame_size(name: str, width: int, height: int, limits: MediaLimits) -> None:
    if width * height > limits.max_pixels:
        raise MediaTooLargeError(
            name, f"{width}x{height} video frames are over the limit of {limits.max_pixels} pixels"
        )


def _probe_video_end(source: MediaSource, stop_s: float) -> float | None:
    """Where the video stream's packets end, by reading packets without decoding them (for containers that
    declare no duration, such as browser-recorded webm). Stops at the first packet ending past `stop_s`, so the
    result is either the true end (<= stop_s) or some time past `stop_s`. None when packets carry no times."""
    with _open_container(source) as container:
        stream = container.streams.video[0]
        t0 = _container_t0(container)
        end = None
        for packet in container.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - t0
            end = t if end is None else max(end, t)
            if end > stop_s:
                break
        return end


class _VideoDecode:
    """One pass over a container: yields the video frames inside the window as (time, index, av frame) and hands
    audio frames inside the window to an `_AudioCollector`. Afterwards `check_complete()` reports truncation.

    The window and the frame size are checked against the limits before decoding, from what the file declares
    (`probe`: read the packets' times when the container declares no duration); decoding checks them again and
    stops as soon as the window's video and audio are in.
    """

    def __init__(self, container, source, name, start_s, end_s, with_audio, limits, probe=False):
        if not container.streams.video:
            kind = "audio only" if container.streams.audio else "no streams"
            raise UnsupportedMediaError(name, f"has no video stream ({kind}); use load_audio for audio files")
        self.container, self.name, self.limits = container, name, limits
        self.vstream = container.streams.video[0]
        _check_frame_size(name, self.vstream.codec_context.width, self.vstream.codec_context.height, limits)
        self.vstream.thread_type = "AUTO"
        if DECODE_THREADS:
            self.vstream.thread_count = DECODE_THREADS
        self.astream = container.streams.audio[0] if (with_audio and container.streams.audio) else None
        self.t0 = _container_t0(container)
        self.duration = _container_duration(container, self.vstream)
        if self.duration is None and probe:
            start = 0.0 if start_s is None else float(start_s)
            stop = float(end_s) if end_s is not None else start + limits.max_duration_s
            probed = _probe_video_end(source, stop)
            if probed is not None and probed <= stop:
                self.duration = probed  # read to its end: as good as declared
            elif probed is not None and end_s is None:
                raise MediaTooLargeError(
                    name, f"video runs past the limit of {limits.max_duration_s:.1f}s decoded from {start:.2f}s"
                )
        self.start, self.end = _window(name, start_s, end_s, self.duration)
        _check_window(name, self.start, self.end, self.duration, limits)
        self.rate = float(self.vstream.average_rate or self.vstream.guessed_rate or 0) or None
        self.collector = _AudioCollector(self.t0) if self.astream is not None else None
        self.audio_end = _stream_end(container, self.astream, self.t0) if self.astream is not None else None
        self.last_time: float | None = None
        self.seeked = self.start > 0
        if self.seeked:
            container.seek(int((self.start + self.t0) / self.vstream.time_base), stream=self.vstream, backward=True)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.vstream.codec_context.height, self.vstream.codec_context.width

    def __iter__(self):
        vstream, astream, t0, limits = self.vstream, self.astream, self.t0, self.limits
        index, video_done, audio_done = -1, False, astream is None
        try:
            for packet in self.container.demux(*[s for s in (vstream, astream) if s is not None]):
                if packet.stream is astream:
                    if not audio_done:
                        for frame in packet.decode():
                            if frame.time is None or frame.time - t0 < self.end:
                                self.collector.add(frame)
                            else:
                                audio_done = True
                    elif video_done:
                        break
                    continue
                if video_done:
                    if audio_done:
                        break
                    # An audio track shorter than the window: stop once the muxer's interleaving is well past it.
                    late = packet.pts is not None and packet.time_base is not None
                    if late and float(packet.pts * packet.time_base) - t0 > self.end + 10.0:
                        break
                    continue
                for frame in packet.decode():
                    _check_frame_size(self.name, frame.width, frame.height, limits)
                    index += 1
                    t = (frame.time - t0) if frame.time is not None else index / (self.rate or 25.0)
                    if t < self.start - 1e-6:
                        continue
                    if t >= self.end:
                        video_done = True
                        break
                    _past_limit(self.name, "video", t, self.start, limits)
                    self.last_time = t
                    # After a seek the decode index is not the file's frame number: estimate it from the time.
                    yield t, (round(t * self.rate) if self.seeked and self.rate else index), frame
                if video_done and audio_done:
                    break
        except av.error.FFmpegError as exc:
            _raise_if_out_of_memory(exc)
            raise CorruptMediaError(self.name, f"fails to decode ({exc})") from exc

    def check_complete(self) -> None:
        if self.last_time is None:
            raise EmptyMediaError(self.name, f"no video frames in [{self.start:.2f}s, {min(self.end, 1e9):.2f}s)")
        if self.duration is not None:
            slack = max(0.5, 3.0 / self.rate if self.rate else 0.5)
            if self.last_time < min(self.end, self.duration) - slack:
                raise CorruptMediaError(
                    self.name,
                    f"truncated: video frames stop at {self.last_time:.2f}s, the file declares {self.duration:.2f}s",
                )
        if self.collector is not None:
            self.collector.check_complete(self.name, self.audio_end, self.end)

    def clip_end(self) -> float:
        """The window's end, known once decoding is over even when the container declared no duration."""
        if np.isfinite(self.end):
            return self.end
        return (self.last_time or 0.0) + (1.0 / self.rate if self.rate else 0.0)


def iter_frames(
    source: MediaSource,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
):
    """Every upright RGB frame of a video in the window, as (timestamp_s, frame_index, rgb), without holding the
    clip in memory. Raises (after the last good frame) if the file turns out to be truncated."""
    name = _name(source)
    _check_file(source, limits)
    with _open_container(source) as container:
        decode = _VideoDecode(container, source, name, start_s, end_s, False, limits)
        for t, index, frame in decode:
            yield t, index, _upright(frame)[0]
        decode.check_complete()


def prefetch(iterable, depth: int = 8):
    """Run `iterable` on a background thread, `depth` items ahead: decoding (which releases the GIL inside
    FFmpeg) overlaps with the consumer's work. Exceptions are re-raised in the consumer, in order."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                if stop.is_set():
                    return
                items.put((item, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            items.put((None, exc))
            return
        items.put((done, None))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, exc = items.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)


def load_video(
    source: MediaSource,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    at_s=None,
    start_s: float | None = None,
    end_s: float | None = None,
    with_audio: bool = True,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Video:
    """Decode a video: `num_frames` spread uniformly over the window, frames at `fps`, the frames nearest the
    times `at_s` (seconds, inside the window), or (none of these) every frame.

    Each sample is the decoded frame whose presentation time is nearest the target time, so variable frame rate
    clips sample by time, not by index; asking for more samples than the window has frames repeats frames.
    Decoding is one streaming pass that keeps only the sampled frames (a container that declares no duration has
    its packets' times read first, so the targets are known). Rotation metadata is applied. The audio track, if
    any, is cut to the same window. A file whose video or audio stops well before its declared duration is
    reported as truncated.
    """
    name = _name(source)
    _check_sampling(num_frames, fps, at_s)
    _check_file(source, limits)
    with _open_container(source) as container:
        decode = _VideoDecode(container, source, name, start_s, end_s, with_audio, limits, probe=True)
        height, width = decode.frame_size
        frame_bytes = max(1, height * width * 3)
        targets = _targets(decode.start, decode.end, num_frames, fps, at_s) if np.isfinite(decode.end) else None
        if at_s is not None and targets is not None and (targets[0] < decode.start or targets[-1] >= decode.end):
            raise ValueError(
                f"{name}: sampling times {targets[0]:.2f}s-{targets[-1]:.2f}s fall outside the window "
                f"[{decode.start:.2f}s, {decode.end:.2f}s)"
            )
        if at_s is not None and targets is None:
            raise ValueError(f"{name}: at_s needs a window with an end (the video declares no duration)")
        expected = len(targets) if targets is not None else None
        if expected is None and np.isfinite(decode.end) and decode.rate:
            expected = int(np.ceil((decode.end - decode.start) * decode.rate))
        if expected is not None and expected * frame_bytes > limits.max_decoded_bytes:
            raise MediaTooLargeError(
                name,
                f"{expected} frames of {width}x{height} would take {expected * frame_bytes} bytes, over the limit "
                f"of {limits.max_decoded_bytes} (ask for fewer frames or a shorter window)",
            )

        def hold(count: int) -> None:
            if count * frame_bytes > limits.max_decoded_bytes:
                raise MediaTooLargeError(
                    name, f"decoded frames pass the limit of {limits.max_decoded_bytes} bytes after {count} frames"
                )

        kept: list[tuple[float, int, object]] = []  # every frame, when there are no targets
        chosen: list[tuple[float, int, object]] = []
        prev = None
        next_target = distinct = 0
        for item in decode:
            if targets is None:
                kept.append(item)
                hold(len(kept))
                continue
            # Each target takes the nearest frame: once a frame passes a target, that is this frame or the last.
            t = item[0]
            while next_target < len(targets) and t >= targets[next_target]:
                target = targets[next_target]
                pick = prev if prev is not None and target - prev[0] <= t - target else item
                if not chosen or chosen[-1] is not pick:  # picks only move forward: a repeat is the last one
                    distinct += 1
                    hold(distinct)
                chosen.append(pick)
                next_target += 1
            prev = item
        decode.check_complete()
        if targets is not None:
            chosen += [prev] * (len(targets) - next_target)  # targets after the last frame take the last frame
        elif num_frames is not None or fps is not None:
            # Neither a declared duration nor packet times: sample now that the whole window is known.
            times = np.array([k[0] for k in kept])
            targets = _targets(decode.start, decode.clip_end(), num_frames, fps)
            chosen = [kept[int(np.argmin(np.abs(times - t)))] for t in targets]
        else:
            chosen = kept
        del kept

        frames, rotation, converted = [], 0, {}
        for item in chosen:
            if id(item) not in converted:  # a frame picked by several targets is converted once
                converted[id(item)], rotation = _upright(item[2])
            frames.append(converted[id(item)])
        end = decode.clip_end()
        return Video(
            frames=np.stack(frames),
            timestamps_s=np.array([c[0] for c in chosen], dtype=np.float64),
            frame_indices=np.array([c[1] for c in chosen], dtype=np.int64),
            source=name,
            duration_s=decode.duration if decode.duration is not None else end,
            average_fps=decode.rate or 0.0,
            window_s=(decode.start, end),
            audio=decode.collector.finish(decode.start, end, name) if decode.collector is not None else None,
            has_audio_track=bool(container.streams.audio),
            rotation_degrees=rotation,
        )


@dataclass(frozen=True)
class VideoInfo:
    """What a video declares, read without decoding frames: duration (packet times when the container declares
    none), average frame rate (0 when unknown), frame size, and whether it has an audio track."""

    duration_s: float | None
    average_fps: float
    width: int
    height: int
    has_audio_track: bool


def probe_video(source: MediaSource, limits: MediaLimits = DEFAULT_LIMITS) -> VideoInfo:
    """A video's duration, frame rate and size, without decoding it. Raises the same errors as `load_video`."""
    name = _name(source)
    _check_file(source, limits)
    with _open_container(source) as container:
        if not container.streams.video:
            kind = "audio only" if container.streams.audio else "no streams"
            raise UnsupportedMediaError(name, f"has no video stream ({kind}); use load_audio for audio files")
        stream = container.streams.video[0]
        duration = _container_duration(container, stream)
        if duration is None:
            duration = _probe_video_end(source, float("inf"))
        return VideoInfo(
            duration_s=duration,
            average_fps=float(stream.average_rate or stream.guessed_rate or 0),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio_track=bool(container.streams.audio),
        )


# ----------------------------------------------------------------------------------------------------------------
# Dispatch


def media_kind(source: MediaSource) -> str:
    """'image', 'video' or 'audio', by extension for paths, by probing for bytes or unknown extensions."""
    if not isinstance(source, bytes | bytearray):
        suffix = Path(source).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return "image"
        if suffix in VIDEO_EXTENSIONS:
            return "video"
        if suffix in AUDIO_EXTENSIONS:
            return "audio"
    _check_file(source, DEFAULT_LIMITS)
    head = _head(source)
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    with _open_container(source) as container:
        return "video" if container.streams.video else "audio"
