"""Bad media: each is refused with one typed error naming the file (and, from the CLI, one line, no traceback);
inputs that are unambiguous are converted as documented, never silently changed in meaning."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mllm.media import (
    AUDIO_SAMPLE_RATE,
    CorruptMediaError,
    EmptyMediaError,
    MediaArrayError,
    MediaLimits,
    MediaNotFoundError,
    MediaTooLargeError,
    UnsupportedMediaError,
    audio_from_array,
    image_from_array,
    load_audio,
    load_image,
    load_video,
    probe_video,
)
from mllm.samples import synthetic
from tests.reliability.conftest import assert_refused, checksums

# ---------------------------------------------------------------------------------------------------------------
# Files


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _float_wav(path, samples):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=AUDIO_SAMPLE_RATE)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_SAMPLE_RATE, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _tone(path):
    return synthetic.write_audio(path, synthetic.tone(440, 3.0, sample_rate=22_050), 22_050)


def _spiky(value):
    samples = synthetic.tone(300, 1.0)
    samples[8000] = value
    return samples


# (name, make(folder, media) -> path, load(path), error type, message pattern after the file name)
FILE_CASES = [
    ("missing", lambda d, m: d / "gone.wav", load_audio, MediaNotFoundError, "file not found"),
    ("folder", lambda d, m: _folder(d / "dir.mp4"), load_video, UnsupportedMediaError, "not a regular file"),
    ("empty wav", lambda d, m: _write(d / "e.wav", b""), load_audio, EmptyMediaError, "file is empty"),
    ("text as mp4", lambda d, m: m["text_mp4"], load_video, UnsupportedMediaError, "starts with text"),
    ("text as png", lambda d, m: _write(d / "t.png", b"hello\n" * 9), load_image, UnsupportedMediaError, "not a rec"),
    ("wav cut in half", lambda d, m: _cut(_tone(d / "a.wav")), load_audio, CorruptMediaError, "truncated: the WAV"),
    ("mp3 cut in half", lambda d, m: _cut(_tone(d / "a.mp3")), load_audio, CorruptMediaError, "truncated: audio sto"),
    ("flac cut in half", lambda d, m: _cut(_tone(d / "a.flac")), load_audio, CorruptMediaError, "fails to decode"),
    ("m4a cut in half", lambda d, m: _cut(_tone(d / "a.m4a")), load_audio, CorruptMediaError, "corrupt or trunc"),
    ("NaN in float wav", lambda d, m: _float_wav(d / "n.wav", _spiky(np.nan)), load_audio, CorruptMediaError, "NaN"),
    ("inf in float wav", lambda d, m: _float_wav(d / "i.wav", _spiky(np.inf)), load_audio, CorruptMediaError, "inf"),
    ("mp4 cut in half", lambda d, m: m["truncated_mp4"], load_video, CorruptMediaError, "corrupt or truncated"),
    ("png cut", lambda d, m: _cut(m["png"], 0.3), load_image, CorruptMediaError, "corrupt"),
    ("audio as video", lambda d, m: _tone(d / "o.wav"), load_video, UnsupportedMediaError, "no video stream"),
    ("silent video as audio", lambda d, m: m["silent"], load_audio, EmptyMediaError, "has no audio track"),
]


def _folder(path):
    path.mkdir()
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def media(text_as_mp4, truncated_mp4, astronaut_png, video_without_audio):
    return {
        "text_mp4": text_as_mp4,
        "truncated_mp4": truncated_mp4,
        "png": astronaut_png,
        "silent": video_without_audio,
    }


@pytest.mark.parametrize("name, make, load, error, pattern", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files(tmp_path, media, name, make, load, error, pattern):
    path = make(tmp_path, media)
    before = checksums(path) if path.is_file() else None
    with pytest.raises(error) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and pattern in message, message
    if before is not None:
        assert checksums(path) == before


# ---------------------------------------------------------------------------------------------------------------
# Limits and windows


def test_limits_bound_the_window_and_the_frames(media_dir, video_with_audio):
    with pytest.raises(MediaTooLargeError, match=r"talk\.mp4: 640x360 video frames are over the limit of 1000"):
        load_video(video_with_audio, num_frames=2, limits=MediaLimits(max_pixels=1000))
    with pytest.raises(MediaTooLargeError, match=r"talk\.mp4: 8 frames of 640x360 would take 5529600 bytes"):
        load_video(video_with_audio, num_frames=8, limits=MediaLimits(max_decoded_bytes=5_000_000))
    short = MediaLimits(max_duration_s=1.0)
    with pytest.raises(MediaTooLargeError, match=r"talk\.mp4: the window \[0\.50s, 2\.00s\) lasts 1\.5s"):
        load_video(video_with_audio, start_s=0.5, limits=short)
    # The limit bounds what is decoded: a 1 s window of the 2 s file is fine, for video and audio.
    assert len(load_video(video_with_audio, num_frames=3, start_s=0.5, end_s=1.5, limits=short)) == 3
    assert load_audio(video_with_audio, end_s=1.0, limits=short).duration_s == pytest.approx(1.0)
    with pytest.raises(MediaTooLargeError, match=r"talk\.mp4: duration 2\.0s is over the limit of 1\.0s"):
        load_audio(video_with_audio, limits=short)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"start_s": 5.0}, "empty or negative time window"),
        ({"start_s": float("nan")}, "must be finite"),
        ({"start_s": 1.0, "end_s": 0.5}, "empty or negative time window"),
        ({"at_s": [0.5, 3.0]}, r"sampling times 0\.50s-3\.00s fall outside the window"),
        ({"at_s": [1.0, 0.5]}, "non-decreasing"),
        ({"num_frames": 0}, "num_frames must be an integer >= 1"),
        ({"fps": float("inf")}, "fps must be > 0"),
        ({"fps": "2"}, "fps must be > 0"),
        ({"limits": "nan duration"}, "MediaLimits must be positive"),
    ],
)
def test_bad_windows_and_sampling(video_without_audio, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        if kwargs.get("limits") == "nan duration":
            kwargs = {"limits": MediaLimits(max_duration_s=float("nan"))}
        load_video(video_without_audio, **kwargs)


def test_frames_at_given_times_and_probe(video_with_audio):
    info = probe_video(video_with_audio)
    assert (info.duration_s, info.average_fps, info.width, info.height, info.has_audio_track) == (2.0, 25, 640, 360, 1)
    clip = load_video(video_with_audio, at_s=[0.44, 0.48, 1.96], start_s=0.44, end_s=2.0)
    np.testing.assert_allclose(clip.timestamps_s, [0.44, 0.48, 1.96], atol=1e-6)
    assert len(clip.audio.samples) == round(1.56 * AUDIO_SAMPLE_RATE)


def test_durationless_webm_is_sampled_by_packet_times(tmp_path):
    import av

    path = tmp_path / "recorded.webm"
    with av.open(str(path), "w", format="webm", options={"live": "1"}) as out:
        stream = out.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    clip = load_video(path, num_frames=3)
    np.testing.assert_allclose(clip.timestamps_s, [0.5, 1.5, 2.5], atol=0.051)
    assert probe_video(path).duration_s == pytest.approx(3.0, abs=0.11)
    with pytest.raises(MediaTooLargeError, match="recorded.webm: video runs past the limit of 2.0s"):
        load_video(path, num_frames=3, limits=MediaLimits(max_duration_s=2.0))
    assert len(load_video(path, num_frames=2, end_s=1.5, limits=MediaLimits(max_duration_s=2.0))) == 2


@pytest.mark.parametrize("live", [False, True], ids=["declared duration", "no duration (browser webm)"])
def test_the_duration_limit_bounds_the_window_not_the_file(tmp_path, tiny_processor, live):
    from tests.reliability.test_memory import _repeat_keyframe

    options = {"options": {"live": "1"}} if live else {}
    path = _repeat_keyframe(tmp_path / "lecture.webm", "libvpx", (48, 64), 11 * 60, 1, **options)
    expected = "video runs past the limit of 600.0s" if live else "duration 660.0s is over the limit of 600.0s"
    with pytest.raises(MediaTooLargeError, match=f"lecture.webm: {expected}"):
        load_video(path, num_frames=4)
    clip = load_video(path, num_frames=4, start_s=300.0, end_s=305.0)
    assert clip.window_s == (300.0, 305.0) and ((clip.timestamps_s >= 300) & (clip.timestamps_s < 305)).all()
    part = {"type": "video", "video": str(path)}
    batch = tiny_processor([[{"role": "user", "content": [part]}]], limits={"seconds": 5, "frames": 2})
    assert batch["pixel_values"].shape[0] == 2


# ---------------------------------------------------------------------------------------------------------------
# Arrays: accepted with a documented conversion, or refused


BAD_IMAGES = [
    ("NaN", np.full((8, 8, 3), np.nan), "NaN or infinite"),
    ("inf", np.full((8, 8), np.inf, np.float32), "NaN or infinite"),
    ("float over 1", np.full((8, 8, 3), 2.0), r"float image values must lie in \[0, 1\]"),
    ("negative float", np.full((8, 8, 3), -0.5), r"must lie in \[0, 1\]"),
    ("int over 255", np.full((8, 8, 3), 300, np.int64), "integer image values must lie in 0-255"),
    ("channels first", np.zeros((3, 8, 8), np.uint8), "channels last"),
    ("5 channels", np.zeros((8, 8, 5), np.uint8), r"expected \(H, W\)"),
    ("1-D", np.zeros(64, np.uint8), r"expected \(H, W\)"),
    ("empty", np.zeros((0, 8, 3), np.uint8), "is empty"),
    ("bool", np.ones((8, 8), bool), "dtype bool"),
    ("list", [[0, 1], [2, 3]], "numpy array or a PIL image"),
]


@pytest.mark.parametrize("name, image, pattern", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_arrays(name, image, pattern):
    with pytest.raises(MediaArrayError, match=f"<array>: .*{pattern}"):
        image_from_array(image)


def test_image_arrays_are_converted_as_files_are(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert (image_from_array(gray) == gray[:, :, None]).all() and image_from_array(gray).shape == (8, 8, 3)
    assert (image_from_array(gray[:, :, None]) == image_from_array(gray)).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)
    rgba[:, 4:] = (0, 0, 255, 128)  # half-transparent blue over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (image_from_array(rgba) == load_image(tmp_path / "rgba.png")).all()
    assert (image_from_array(Image.open(tmp_path / "rgba.png")) == load_image(tmp_path / "rgba.png")).all()
    assert image_from_array(np.full((4, 4, 3), 0.5)).tolist() == np.full((4, 4, 3), 128).tolist()
    assert image_from_array(np.full((4, 4, 3), 7, np.int64)).dtype == np.uint8
    with pytest.raises(MediaTooLargeError, match="<array>: 8x8 pixels is over the limit of 10"):
        image_from_array(gray, MediaLimits(max_pixels=10))


BAD_AUDIO = [
    ("NaN", _spiky(np.nan), "NaN or infinite"),
    ("inf", _spiky(-np.inf), "NaN or infinite"),
    ("empty", np.zeros(0, np.float32), "empty"),
    ("3-D", np.zeros((2, 2, 100), np.float32), r"expected \(samples,\)"),
    ("ambiguous channels", np.zeros((4, 4), np.float32), "at most 8 channels"),
    ("16 channels", np.zeros((16, 1000), np.float32), "at most 8 channels"),
    ("int64", np.zeros(100, np.int64), "expected float, int16, int32 or uint8"),
    ("list", [0.0, 0.1], "must be a numpy array"),
]


@pytest.mark.parametrize("name, samples, pattern", BAD_AUDIO, ids=[c[0] for c in BAD_AUDIO])
def test_bad_audio_arrays(name, samples, pattern):
    with pytest.raises(MediaArrayError, match=f"<array>: .*{pattern}"):
        audio_from_array(samples)


def test_audio_arrays_mix_down_and_scale():
    left, right = synthetic.tone(300, 1.0), synthetic.tone(500, 1.0)
    stereo = np.stack([left, right])
    np.testing.assert_allclose(audio_from_array(stereo), (left + right) / 2, atol=1e-7)
    np.testing.assert_allclose(audio_from_array(stereo.T), (left + right) / 2, atol=1e-7)
    assert len(audio_from_array(stereo)) == len(left)  # not the channels one after the other
    pcm = (left * 32767).astype(np.int16)
    np.testing.assert_allclose(audio_from_array(pcm), left, atol=1e-4)
    np.testing.assert_allclose(audio_from_array((pcm // 256 + 128).astype(np.uint8)), left, atol=0.01)


# ---------------------------------------------------------------------------------------------------------------
# The CLI: one line, exit 1, no traceback, the file named and left as it was


CLI_CASES = [
    ("text as mp4", lambda d, m: m["text_mp4"], "starts with text"),
    ("truncated mp4", lambda d, m: m["truncated_mp4"], "corrupt or truncated"),
    ("empty jpg", lambda d, m: _write(d / "e.jpg", b""), "file is empty"),
    ("missing", lambda d, m: d / "gone.mp4", "not found"),
    ("png cut", lambda d, m: _cut(m["png"], 0.3), "corrupt"),
    ("audio only", lambda d, m: _tone(d / "v.wav"), "audio only"),
]


@pytest.mark.parametrize("name, make, pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_faces_cli_refuses_bad_media(cli, tmp_path, media, name, make, pattern):
    path = make(tmp_path, media)
    before = checksums(path) if path.is_file() else None
    line = assert_refused(cli("faces", path, "--out", tmp_path / "out"), str(path), code=1)
    assert pattern in line, line
    if before is not None:
        assert checksums(path) == before


def test_too_many_media_parts_are_refused_before_any_is_read(tiny_processor, astronaut_png, tmp_path):
    """The ninth part is refused before the first is decoded or searched for a face: a request of many parts costs
    nothing (the first part here names a file that does not exist; reading it would fail first)."""
    from mllm.parts import MediaAccess, ProcessorInputError

    parts = [{"type": "image", "image": str(tmp_path / "missing.png")}] + [
        {"type": "image", "image": str(astronaut_png)}
    ] * 8  # fmt: skip
    with pytest.raises(ProcessorInputError, match="at most 8 media parts"):
        tiny_processor([[{"role": "user", "content": parts}]], access=MediaAccess(max_parts=8))
