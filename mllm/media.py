"""Decode media into arrays: RGB frames with timestamps, and 16 kHz mono float32 audio on the same clock.

Everything goes through PyAV, which carries FFmpeg in its wheel, and Pillow for still images (ARCHITECTURE.md,
decision 5). Every failure is a typed `MediaError` naming the file; nothing partial is returned as if complete.

    >>> clip = load_video("talk.mp4", num_frames=8)          # doctest: +SKIP
    >>> clip.frames.shape, clip.timestamps_s[:2], clip.audio.samples.dtype
    ((8, 360, 640, 3), array([0.3125, 0.9375]), dtype('float32'))
"""

from __future__ import annotations

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
    """A media file that cannot be used. `source` names the file (or `<bytes>`)."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


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


@dataclass(frozen=True)
class MediaLimits:
    """Refuse media beyond these bounds before decoding it (oversized uploads, decompression bombs)."""

    max_bytes: int = 2 * 1024**3
    max_duration_s: float = 600.0
    max_pixels: int = 8192 * 8192

    def __post_init__(self):
        if self.max_bytes <= 0 or self.max_duration_s <= 0 or self.max_pixels <= 0:
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


def _open_container(source: MediaSource) -> av.container.InputContainer:
    name = _name(source)
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source), "r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
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


def _check_duration(name: str, duration: float | None, limits: MediaLimits) -> None:
    if duration is not None and duration > limits.max_duration_s:
        raise MediaTooLargeError(name, f"duration {duration:.1f}s is over the limit of {limits.max_duration_s:.1f}s")


def _window(name: str, start_s: float | None, end_s: float | None, duration: float | None) -> tuple[float, float]:
    start = 0.0 if start_s is None else float(start_s)
    end = float("inf") if end_s is None else float(end_s)
    if duration is not None:
        end = min(end, duration)
    if start < 0 or end <= start:
        raise ValueError(f"{name}: empty or negative time window [{start_s}, {end_s}] (media lasts {duration}s)")
    return start, end


# ----------------------------------------------------------------------------------------------------------------
# Images


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
            im = ImageOps.exif_transpose(im)
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


# ----------------------------------------------------------------------------------------------------------------
# Audio


class _AudioCollector:
    """Resamples decoded audio frames to 16 kHz mono float32 and remembers when the first sample plays."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        self.chunks: list[np.ndarray] = []
        self.first_s: float | None = None

    def add(self, frame) -> None:
        if self.first_s is None and frame.time is not None:
            self.first_s = frame.time - self.t0
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self, start: float, end: float, source: str) -> Audio:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        samples = np.concatenate(self.chunks).astype(np.float32) if self.chunks else np.zeros(0, np.float32)
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


def load_audio(
    source: MediaSource,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Audio:
    """The audio track of an audio or video file as 16 kHz mono float32, cut to [start_s, end_s)."""
    name = _name(source)
    _check_file(source, limits)
    with _open_container(source) as container:
        if not container.streams.audio:
            raise EmptyMediaError(name, "has no audio track")
        stream = container.streams.audio[0]
        duration = _container_duration(container, stream)
        _check_duration(name, duration, limits)
        start, end = _window(name, start_s, end_s, duration)
        t0 = _container_t0(container)
        collector = _AudioCollector(t0)
        if start > 0:
            container.seek(int((start + t0) / stream.time_base), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                if frame.time is not None and frame.time - t0 >= end:
                    break
                collector.add(frame)
                if frame.time is not None and frame.time - t0 > limits.max_duration_s:
                    raise MediaTooLargeError(name, f"audio runs past the limit of {limits.max_duration_s:.1f}s")
        except av.error.FFmpegError as exc:
            raise CorruptMediaError(name, f"audio stream fails to decode ({exc})") from exc
        if not collector.chunks:
            raise EmptyMediaError(name, f"no audio samples in [{start:.2f}s, {end:.2f}s)")
        if not np.isfinite(end):
            end = start + sum(len(c) for c in collector.chunks) / AUDIO_SAMPLE_RATE
        return collector.finish(start, end, name)


# ----------------------------------------------------------------------------------------------------------------
# Video


def _targets(start: float, end: float, num_frames: int | None, fps: float | None) -> np.ndarray | None:
    """Times to sample at: N centred points over the window, or a fixed rate; None keeps every frame."""
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


def _check_sampling(num_frames: int | None, fps: float | None) -> None:
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")


class _VideoDecode:
    """One pass over a container: yields the video frames inside the window as (time, index, av frame) and hands
    audio frames inside the window to an `_AudioCollector`. Afterwards `check_complete()` reports truncation."""

    def __init__(self, container, name, start_s, end_s, with_audio, limits):
        if not container.streams.video:
            kind = "audio only" if container.streams.audio else "no streams"
            raise UnsupportedMediaError(name, f"has no video stream ({kind}); use load_audio for audio files")
        self.container, self.name, self.limits = container, name, limits
        self.vstream = container.streams.video[0]
        self.vstream.thread_type = "AUTO"
        self.astream = container.streams.audio[0] if (with_audio and container.streams.audio) else None
        self.duration = _container_duration(container, self.vstream)
        _check_duration(name, self.duration, limits)
        self.start, self.end = _window(name, start_s, end_s, self.duration)
        self.t0 = _container_t0(container)
        self.rate = float(self.vstream.average_rate or self.vstream.guessed_rate or 0) or None
        self.collector = _AudioCollector(self.t0) if self.astream is not None else None
        self.last_time: float | None = None
        self.seeked = self.start > 0
        if self.seeked:
            container.seek(int((self.start + self.t0) / self.vstream.time_base), stream=self.vstream, backward=True)

    def __iter__(self):
        vstream, astream, t0, limits = self.vstream, self.astream, self.t0, self.limits
        index, video_done = -1, False
        try:
            for packet in self.container.demux(*[s for s in (vstream, astream) if s is not None]):
                if packet.stream is astream:
                    for frame in packet.decode():
                        if frame.time is None or frame.time - t0 < self.end:
                            self.collector.add(frame)
                    continue
                if video_done:
                    if astream is None:
                        break
                    continue
                for frame in packet.decode():
                    index += 1
                    t = (frame.time - t0) if frame.time is not None else index / (self.rate or 25.0)
                    if t > limits.max_duration_s:
                        raise MediaTooLargeError(
                            self.name, f"video runs past the limit of {limits.max_duration_s:.1f}s"
                        )
                    if t < self.start - 1e-6:
                        continue
                    if t >= self.end:
                        video_done = True
                        break
                    self.last_time = t
                    # After a seek the decode index is not the file's frame number: estimate it from the time.
                    yield t, (round(t * self.rate) if self.seeked and self.rate else index), frame
        except av.error.FFmpegError as exc:
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
        decode = _VideoDecode(container, name, start_s, end_s, False, limits)
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
    start_s: float | None = None,
    end_s: float | None = None,
    with_audio: bool = True,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Video:
    """Decode a video: `num_frames` spread uniformly over the window, or frames at `fps`, or (neither) every frame.

    Each sample is the decoded frame whose presentation time is nearest the target time, so variable frame rate
    clips sample by time, not by index; asking for more samples than the window has frames repeats frames.
    Rotation metadata is applied. The audio track, if any, is cut to the same window. A file whose video stream
    stops well before its declared duration is reported as truncated.
    """
    name = _name(source)
    _check_sampling(num_frames, fps)
    _check_file(source, limits)
    with _open_container(source) as container:
        decode = _VideoDecode(container, name, start_s, end_s, with_audio, limits)
        targets = _targets(decode.start, decode.end, num_frames, fps) if np.isfinite(decode.end) else None
        kept: list[tuple[float, int, object]] = []  # every frame, when there are no targets yet
        chosen: list[tuple[float, int, object]] = []
        prev = None
        next_target = 0
        for item in decode:
            if targets is None:
                kept.append(item)
                continue
            # Each target takes the nearest frame: once a frame passes a target, that is this frame or the last.
            t = item[0]
            while next_target < len(targets) and t >= targets[next_target]:
                target = targets[next_target]
                chosen.append(prev if prev is not None and target - prev[0] <= t - target else item)
                next_target += 1
            prev = item
        decode.check_complete()
        if targets is not None:
            chosen += [prev] * (len(targets) - next_target)  # targets after the last frame take the last frame
        elif num_frames is not None or fps is not None:
            # The container declared no duration: sample now that the whole window is known.
            times = np.array([k[0] for k in kept])
            targets = _targets(decode.start, decode.clip_end(), num_frames, fps)
            chosen = [kept[int(np.argmin(np.abs(times - t)))] for t in targets]
        else:
            chosen = kept

        frames, rotation = [], 0
        for _, _, frame in chosen:
            rgb, rotation = _upright(frame)
            frames.append(rgb)
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
