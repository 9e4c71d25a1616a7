"""Real-format media made offline, for tests, benchmarks and the offline example.

Faces come from a real photograph (`skimage.data.astronaut()`, shipped inside scikit-image); speech comes from
`espeak-ng` when it is installed, tones otherwise. Everything is encoded with PyAV into ordinary containers, so
the decoding path under test is the one real files take.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Video codec and audio codec per container, as cameras and phones write them.
CONTAINER_CODECS: dict[str, tuple[str, str]] = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx265", "aac"),
    ".avi": ("mpeg4", "mp3"),
    ".webm": ("libvpx-vp9", "libopus"),
    ".mkv": ("libx264", "flac"),
}
AUDIO_CODECS: dict[str, tuple[str, str | None]] = {
    ".wav": ("pcm_s16le", None),
    ".mp3": ("libmp3lame", None),
    ".flac": ("flac", None),
    ".m4a": ("aac", "mp4"),
    ".ogg": ("libopus", None),
}


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def no_face_image() -> np.ndarray:
    """A real photograph without a human face (a cat)."""
    from skimage import data

    return data.chelsea()


def _face_patch(height: int) -> np.ndarray:
    """The astronaut's head and shoulders, scaled to `height` pixels tall."""
    crop = astronaut()[20:280, 100:350]
    width = round(crop.shape[1] * height / crop.shape[0])
    return np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))


def face_frames(
    n: int,
    size: tuple[int, int] = (360, 640),
    absent: range | None = None,
    face_height_fraction: float = 0.8,
) -> np.ndarray:
    """`n` frames (height, width) of the astronaut drifting across a textured background; frames in `absent`
    show the background alone (no face)."""
    height, width = size
    rng = np.random.default_rng(0)
    background = (rng.integers(60, 120, (height // 8 + 1, width // 8 + 1, 3))).astype(np.uint8)
    background = np.asarray(Image.fromarray(background).resize((width, height), Image.BILINEAR))
    patch = _face_patch(int(height * face_height_fraction))
    ph, pw = patch.shape[:2]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frame = background.copy()
        if absent is None or i not in absent:
            x = int((width - pw) / 2 + 0.15 * (width - pw) * np.sin(2 * np.pi * i / max(n, 30)))
            y = int((height - ph) / 2 + 0.05 * height * np.cos(2 * np.pi * i / max(n, 30)))
            frame[y : y + ph, x : x + pw] = patch
        frames[i] = frame
    return frames


def tone(frequency_hz: float, seconds: float, sample_rate: int = 16_000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)


def speech(text: str, sample_rate: int = 16_000) -> np.ndarray | None:
    """`text` spoken by espeak-ng as mono float32 at `sample_rate`, or None when espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        return None
    from mllm.media import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        audio = load_audio(wav)
    assert sample_rate == audio.sample_rate
    return audio.samples


def speech_or_tone(text: str, seconds: float, tone_hz: float = 220.0, sample_rate: int = 16_000) -> np.ndarray:
    """Exactly `seconds` of `text` spoken by espeak-ng (cut or padded with silence), or a tone without it."""
    samples = speech(text, sample_rate)
    n = int(round(seconds * sample_rate))
    if samples is None:
        return tone(tone_hz, seconds, sample_rate)
    return np.pad(samples[:n], (0, max(0, n - len(samples))))


def _audio_frames(stream, samples: np.ndarray, sample_rate: int):
    size = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    pcm = np.clip(samples.astype(np.float64), -1, 1)
    if fmt.startswith("s16"):
        pcm = (pcm * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        pcm = (pcm * 2147483647).astype(np.int32)
    else:
        pcm = pcm.astype(np.float64 if fmt.startswith("dbl") else np.float32)
    for start in range(0, len(pcm), size):
        chunk = pcm[start : start + size]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format=fmt, layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        yield frame


def _add_audio_stream(out, codec: str, sample_rate: int):
    stream = out.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    if codec in ("pcm_s16le", "flac"):
        stream.format = "s16"
    return stream


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    timestamps_s: np.ndarray | None = None,
    rotation_degrees: int = 0,
    codec: str | None = None,
) -> Path:
    """Encode RGB frames (and mono float audio) into `path`; the container follows the suffix.

    `timestamps_s` gives each frame's presentation time (variable frame rate); `rotation_degrees` writes a
    display matrix (counter-clockwise), as phones do for portrait video.
    """
    path = Path(path)
    video_codec, audio_codec = CONTAINER_CODECS[path.suffix.lower()]
    video_codec = codec or video_codec
    with av.open(str(path), "w") as out:
        stream = out.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if video_codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        if timestamps_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation_degrees:
            stream.set_display_rotation(rotation_degrees)
        astream = _add_audio_stream(out, audio_codec, sample_rate) if audio is not None else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if timestamps_s is not None:
                frame.pts = int(round(timestamps_s[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if astream is not None:
            for frame in _audio_frames(astream, audio, sample_rate):
                out.mux(astream.encode(frame))
            out.mux(astream.encode())
    return path


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int = 16_000) -> Path:
    path = Path(path)
    codec, container_format = AUDIO_CODECS[path.suffix.lower()]
    with av.open(str(path), "w", format=container_format) as out:
        stream = _add_audio_stream(out, codec, sample_rate if codec != "libopus" else 48_000)
        rate = stream.codec_context.sample_rate
        if rate != sample_rate:  # opus runs at 48 kHz
            idx = np.arange(int(len(samples) * rate / sample_rate)) * sample_rate / rate
            samples = np.interp(idx, np.arange(len(samples)), samples).astype(np.float32)
        for frame in _audio_frames(stream, samples, rate):
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_image(path: str | Path, rgb: np.ndarray, **save_kwargs) -> Path:
    Image.fromarray(rgb).save(path, **save_kwargs)
    return Path(path)
