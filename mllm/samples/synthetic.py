"""Real-format media made offline, for tests, benchmarks and the offline example.

Faces come from a real photograph (`skimage.data.astronaut()`, shipped inside scikit-image); speech comes from
`espeak-ng` when it is installed, tones otherwise. Everything is encoded with PyAV into ordinary containers, so
the decoding path under test is the one real files take.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
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


def write_y4m(path: str | Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Frames as an uncompressed YUV4MPEG2 (4:2:0, BT.601 full range) clip: what Chromium's fake camera plays
    (`--use-file-for-fake-video-capture`). Height and width must be even."""
    n, height, width = frames.shape[:3]
    if height % 2 or width % 2:
        raise ValueError(f"y4m 4:2:0 needs an even height and width, got {height}x{width}")
    path = Path(path)
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{int(fps)}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            chroma = lambda c: c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))  # noqa: E731
            out.write(b"FRAME\n")
            for plane in (y, chroma(u), chroma(v)):
                out.write(np.clip(np.round(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def write_image(path: str | Path, rgb: np.ndarray, **save_kwargs) -> Path:
    Image.fromarray(rgb).save(path, **save_kwargs)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Camera-like footage: what a phone records, not a clean animation


def camera_frames(
    n: int,
    size: tuple[int, int] = (360, 640),
    absent: range | None = None,
    fps: float = 25.0,
    face_height_fraction: float = 0.6,
    noise: float = 5.0,
    seed: int = 0,
    talking: bool = False,
):
    """Yield `n` frames (height, width, 3) of the astronaut in front of a real scene (`skimage.data.rocket()`),
    filmed as a handheld camera films: per-frame sensor noise (luma sigma `noise`, chroma half that), a shaky
    camera (a few pixels of random walk), lighting and white balance drifting, the head swaying and tilting by up to
    6 degrees. During `absent` the subject is out of shot: they walk off to the side over the half second before
    and come back over the half second after. A generator, so long clips are never held in memory.

    `talking`: a person talking into a webcam or a phone held at arm's length (use `face_height_fraction` 1 or more:
    the face then fills a third of the frame or more): the jaw opens and closes at syllable rate, the head tilts by
    up to 15 degrees (past the 10 at which the tracker turns the face upright), turns (the face narrowing by up to
    12%), nods, and comes closer and further (10%)."""
    from skimage import data

    height, width = size
    rng = np.random.default_rng(seed)
    margin = 16
    scene = Image.fromarray(data.rocket()).resize((width + 2 * margin, height + 2 * margin), Image.BILINEAR)
    scene = np.asarray(scene, dtype=np.float32)
    patch = Image.fromarray(_face_patch(int(height * face_height_fraction)))
    pw, ph = patch.size
    walk = max(1, round(0.5 * fps))  # frames taken to walk out of shot or back in
    shake = np.zeros(2)
    for i in range(n):
        t = i / fps
        shake = 0.85 * shake + rng.normal(0.0, 1.2, 2)
        sx, sy = np.clip(np.round(shake).astype(int) + margin, 0, 2 * margin)
        frame = scene[sy : sy + height, sx : sx + width].copy()
        away = 0.0  # how far out of shot, 0..1
        if absent is not None and len(absent):
            if i in absent:
                away = 1.0
            elif absent.start - walk <= i < absent.start:
                away = (i - absent.start + walk) / walk
            elif absent.stop <= i < absent.stop + walk:
                away = 1.0 - (i - absent.stop + 1) / walk
        if away < 1.0:
            roll = (15.0 if talking else 6.0) * np.sin(2 * np.pi * t / 4.0)
            face = _talking(patch, t) if talking else patch
            head = np.asarray(face.rotate(roll, resample=Image.BILINEAR, fillcolor=(96, 96, 96)), dtype=np.float32)
            pw, ph = face.size
            x = round((width - pw) / 2 + 0.12 * width * np.sin(2 * np.pi * t / 6.0) + away * (width + pw) / 2)
            x += sx - margin
            y = round((height - ph) / 2 + 0.03 * height * np.cos(2 * np.pi * t / 5.0)) + sy - margin
            x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + pw), min(height, y + ph)
            if x1 > x0 and y1 > y0:
                frame[y0:y1, x0:x1] = head[y0 - y : y1 - y, x0 - x : x1 - x]
        gain = 1.0 + 0.12 * np.sin(2 * np.pi * t / 7.0) + np.array([0.03, 0.0, -0.03]) * np.sin(2 * np.pi * t / 9.0)
        frame *= gain.astype(np.float32)
        frame += rng.standard_normal((height, width, 1), dtype=np.float32) * noise
        frame += rng.standard_normal((height, width, 3), dtype=np.float32) * (noise / 2)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _talking(patch: Image.Image, t: float) -> Image.Image:
    """The head-and-shoulders patch at time `t` of someone talking: the jaw (everything below the mouth's line)
    dropped by up to 7% of the head's height at about 4 syllables a second, the face narrowed as the head turns,
    stretched as it nods, and scaled as it comes closer or further."""
    width, height = patch.size
    mouth = round(0.5 * height)  # the astronaut's mouth line in the patch
    jaw = 0.07 * height * max(0.0, np.sin(2 * np.pi * 4.1 * t) * np.sin(2 * np.pi * 0.7 * t))
    lower = patch.crop((0, mouth, width, height)).resize((width, height - mouth + round(jaw)), Image.BILINEAR)
    opened = Image.new("RGB", (width, height))
    opened.paste(patch.crop((0, 0, width, mouth)), (0, 0))
    opened.paste(lower.crop((0, 0, width, height - mouth)), (0, mouth))
    turn = 1.0 - 0.12 * abs(np.sin(2 * np.pi * t / 3.3))
    nod = 1.0 + 0.05 * np.sin(2 * np.pi * t / 2.1)
    near = 1.0 + 0.1 * np.sin(2 * np.pi * t / 5.7)
    return opened.resize((max(1, round(width * turn * near)), max(1, round(height * nod * near))), Image.BILINEAR)


# x264 as a phone or a web upload leaves it: High profile, CABAC, B-frames, a keyframe every 2 s, quality-based
# rate control. With the sensor noise above this gives about 2-3 Mbit/s at 640x360, and decoding costs what real
# footage of that size costs (roughly 200-400 frames/s on one core here), where a clean animation decodes 5x faster.
CAMERA_X264 = {"preset": "faster", "crf": "23", "profile": "high"}


def write_camera_video(
    path: str | Path,
    n: int,
    size: tuple[int, int] = (360, 640),
    fps: float = 25.0,
    absent: range | None = None,
    seed: int = 0,
    noise: float = 5.0,
    face_height_fraction: float = 0.6,
    talking: bool = False,
) -> Path:
    """An h264 .mp4 of `camera_frames(...)`, encoded frame by frame (memory stays flat however long the clip)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {**CAMERA_X264, "g": str(round(2 * fps))}
        frames = camera_frames(
            n, size, absent, fps, face_height_fraction=face_height_fraction, noise=noise, seed=seed, talking=talking
        )
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return path


# ----------------------------------------------------------------------------------------------------------------
# Face photographs in harder poses, for the detection cascade


@dataclass
class FacePhoto:
    """A real photograph with a face, and the face's box (x0, y0, x1, y1) as dlib's HOG detector draws it."""

    name: str
    rgb: np.ndarray
    box: np.ndarray


def face_photos(lfw: int = 100) -> list[FacePhoto]:
    """The real face photographs shipped inside scikit-image: the astronaut (Eileen Collins, frontal), the
    cameraman (three-quarter view, half hidden by his camera: HOG misses him) and the first `lfw` of the 100 faces
    in `skimage.data.lfw_subset()` (Labeled Faces in the Wild, 25x25 grey crops), each enlarged to a 110 px face on
    a 240 px canvas padded with its own edge pixels."""
    from skimage import data

    photos = [
        FacePhoto("astronaut", astronaut(), np.array([179.0, 83.0, 266.0, 170.0])),
        FacePhoto("camera", np.stack([data.camera()] * 3, axis=-1), np.array([181.0, 122.0, 262.0, 203.0])),
    ]
    face, canvas = 110, 240
    pad = (canvas - face) // 2
    for i, grey in enumerate(data.lfw_subset()[: min(lfw, 100)]):
        big = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize((face, face), Image.BICUBIC))
        rgb = np.stack([np.pad(big, pad, mode="edge")] * 3, axis=-1)
        photos.append(FacePhoto(f"lfw{i:03d}", rgb, np.array([pad, pad, pad + face, pad + face], dtype=np.float64)))
    return photos


def tilted(rgb: np.ndarray, degrees: float, centre) -> np.ndarray:
    """`rgb` turned by `degrees` (counter-clockwise on screen, as PIL turns) about `centre`, corners filled with
    the picture's mean colour."""
    fill = tuple(int(v) for v in rgb.reshape(-1, 3).mean(axis=0))
    turned = Image.fromarray(rgb).rotate(degrees, resample=Image.BILINEAR, center=tuple(centre), fillcolor=fill)
    return np.asarray(turned)


def brow_band(rgb: np.ndarray, box: np.ndarray, colour=(196, 152, 122)) -> np.ndarray:
    """A skin-coloured band over the brows and forehead (a hand across the forehead), a little wider than the
    face; the eyes stay visible."""
    out = rgb.copy()
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    top, bottom = int(max(0, y0 - 0.1 * h)), int(y0 + 0.3 * h)
    left, right = int(max(0, x0 - 0.15 * w)), int(min(rgb.shape[1], x1 + 0.15 * w))
    out[top:bottom, left:right] = colour
    return out


def three_quarter(rgb: np.ndarray, box: np.ndarray, squeeze: float = 0.55) -> np.ndarray:
    """A three-quarter view faked by perspective: the face's right half (image right) squeezed horizontally to
    `squeeze` of its width, as a head turned away foreshortens it, and the background beyond it stretched to
    close the gap. Rows are untouched."""
    width = rgb.shape[1]
    centre = (box[0] + box[2]) / 2
    far = min(width - 1.0, box[2] + 0.25 * (box[2] - box[0]))
    far_out = centre + squeeze * (far - centre)
    x = np.arange(width, dtype=np.float64)
    source = np.where(
        x < centre,
        x,
        np.where(
            x < far_out,
            centre + (x - centre) / squeeze,
            far + (x - far_out) * (width - 1 - far) / max(1.0, width - 1 - far_out),
        ),
    )
    return np.ascontiguousarray(rgb[:, np.clip(np.round(source).astype(int), 0, width - 1)])


def face_variants(photo: FacePhoto) -> dict[str, np.ndarray]:
    """The photograph as it is, tilted by +-25 degrees about the face, with a band over the brow, in a three-quarter
    view, and tilted 20 degrees with the band (the laughing man of issue 8.2: head tilted, hand on his forehead)."""
    centre = (photo.box[:2] + photo.box[2:]) / 2
    return {
        "upright": photo.rgb,
        "tilted +25": tilted(photo.rgb, 25, centre),
        "tilted -25": tilted(photo.rgb, -25, centre),
        "brow covered": brow_band(photo.rgb, photo.box),
        "three-quarter": three_quarter(photo.rgb, photo.box),
        "tilted 20 + brow": brow_band(tilted(photo.rgb, 20, centre), photo.box),
    }
