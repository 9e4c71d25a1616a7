import io

import av
import numpy as np
import pytest
from PIL import Image

from mllm.media import (
    AUDIO_SAMPLE_RATE,
    CorruptMediaError,
    EmptyMediaError,
    MediaLimits,
    MediaNotFoundError,
    MediaTooLargeError,
    UnsupportedMediaError,
    iter_frames,
    load_audio,
    load_image,
    load_video,
    media_kind,
)
from mllm.samples import synthetic
from tests.conftest import FPS, N_FRAMES, SECONDS


def _dominant_hz(samples: np.ndarray, rate: int = AUDIO_SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# ---------------------------------------------------------------------------------------------------------------
# Video


def test_every_frame_with_timestamps_and_aligned_audio(video_with_audio, speech_or_tone):
    clip = load_video(video_with_audio)
    assert clip.frames.shape == (N_FRAMES, 360, 640, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.timestamps_s, np.arange(N_FRAMES) / FPS, atol=1e-6)
    np.testing.assert_array_equal(clip.frame_indices, np.arange(N_FRAMES))
    assert clip.duration_s == pytest.approx(SECONDS)
    assert clip.average_fps == pytest.approx(FPS)
    assert clip.has_audio_track
    assert clip.audio.sample_rate == AUDIO_SAMPLE_RATE and clip.audio.samples.dtype == np.float32
    assert clip.audio.samples.ndim == 1
    assert clip.audio.duration_s == pytest.approx(SECONDS, abs=1 / AUDIO_SAMPLE_RATE)
    # The decoded track follows what was encoded (AAC is lossy: compare envelopes, not samples).
    envelope = lambda x: np.abs(x).reshape(-1, 800).mean(axis=1)  # noqa: E731  50 ms windows
    assert np.corrcoef(envelope(clip.audio.samples), envelope(speech_or_tone))[0, 1] > 0.9


def test_uniform_sampling_picks_centred_frames(video_with_audio):
    clip = load_video(video_with_audio, num_frames=8)
    assert len(clip) == 8
    # Centres of 8 equal parts of 2 s are 0.125, 0.375, ...; the nearest frames at 25 fps are at multiples of 0.04.
    expected = np.round((np.arange(8) + 0.5) * SECONDS / 8 * FPS) / FPS
    np.testing.assert_allclose(clip.timestamps_s, expected, atol=0.021)
    np.testing.assert_array_equal(clip.frame_indices, np.round(clip.timestamps_s * FPS).astype(int))


def test_time_window_at_target_fps_cuts_audio_on_the_same_clock(media_dir, face_frames):
    # A 1 kHz burst from 1.0 s to 1.2 s in silence: its onset must stay at 1.0 s inside the window.
    audio = np.zeros(int(SECONDS * AUDIO_SAMPLE_RATE), np.float32)
    audio[16_000:19_200] = synthetic.tone(1000, 0.2)
    path = synthetic.write_video(media_dir / "burst.mkv", face_frames, fps=FPS, audio=audio)
    clip = load_video(path, fps=10, start_s=0.5, end_s=1.5)
    np.testing.assert_allclose(clip.timestamps_s, 0.5 + np.arange(10) / 10, atol=0.021)
    assert clip.window_s == (0.5, 1.5)
    assert len(clip.audio.samples) == AUDIO_SAMPLE_RATE
    onset = np.argmax(np.abs(clip.audio.samples) > 0.1) / AUDIO_SAMPLE_RATE
    assert onset == pytest.approx(0.5, abs=0.01)


def test_video_without_audio_track_is_valid_and_says_so(video_without_audio):
    clip = load_video(video_without_audio, num_frames=4)
    assert len(clip) == 4
    assert clip.audio is None and not clip.has_audio_track


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".avi", ".webm", ".mkv"])
def test_containers(media_dir, face_frames, speech_or_tone, suffix):
    path = synthetic.write_video(
        media_dir / f"container{suffix}", face_frames[:25], fps=FPS, audio=speech_or_tone[:16000]
    )
    clip = load_video(path, num_frames=5)
    assert clip.frames.shape == (5, 360, 640, 3)
    assert clip.audio is not None and clip.audio.duration_s == pytest.approx(1.0, abs=0.09)
    # Lossy codecs: the decoded frame is close to the encoded one.
    assert np.abs(clip.frames[0].astype(int) - face_frames[clip.frame_indices[0]].astype(int)).mean() < 8
    if suffix == ".mov":
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.name == "hevc"


def test_variable_frame_rate_samples_by_time(media_dir, face_frames):
    # 20 frames: 10 at 10 fps, then 10 at 50 fps.
    times = np.concatenate([np.arange(10) * 0.1, 1.0 + np.arange(10) * 0.02])
    path = synthetic.write_video(media_dir / "vfr.mp4", face_frames[:20], timestamps_s=times)
    every = load_video(path)
    np.testing.assert_allclose(every.timestamps_s, times, atol=1e-3)
    sampled = load_video(path, fps=10)
    # At 10 samples per second the sparse first second gives all its 10 frames and the dense 0.2 s after it only
    # two or three (the stream's declared end sets the last target), not ten.
    np.testing.assert_array_equal(sampled.frame_indices[:10], np.arange(10))
    assert 2 <= len(sampled) - 10 <= 3
    assert np.all(np.diff(sampled.timestamps_s) > 0.05)


def test_rotation_metadata_is_applied(media_dir):
    upright = synthetic.face_frames(5, size=(240, 320))
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # as a phone held sideways stores it
    path = synthetic.write_video(media_dir / "portrait.mov", stored, fps=5, rotation_degrees=90)
    clip = load_video(path)
    assert clip.rotation_degrees == 90
    assert clip.frames.shape[1:3] == (240, 320)
    assert np.abs(clip.frames[0].astype(int) - upright[0].astype(int)).mean() < 8


def test_iter_frames_streams_every_frame(video_without_audio):
    rows = list(iter_frames(video_without_audio, start_s=1.0))
    assert [i for _, i, _ in rows] == list(range(25, 50))
    assert rows[0][2].shape == (360, 640, 3)


def test_video_from_bytes(video_with_audio):
    clip = load_video(video_with_audio.read_bytes(), num_frames=2)
    assert clip.source == "<bytes>" and len(clip) == 2


# ---------------------------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".m4a", ".ogg"])
def test_audio_files_become_16k_mono_float32(media_dir, suffix):
    path = synthetic.write_audio(media_dir / f"tone{suffix}", synthetic.tone(440, 1.5, sample_rate=22_050), 22_050)
    audio = load_audio(path)
    assert audio.sample_rate == AUDIO_SAMPLE_RATE and audio.samples.dtype == np.float32
    assert audio.duration_s == pytest.approx(1.5, abs=0.06)
    assert _dominant_hz(audio.samples) == pytest.approx(440, abs=5)


def test_audio_window_and_audio_of_a_video(video_with_audio):
    audio = load_audio(video_with_audio, start_s=0.5, end_s=1.25)
    assert len(audio.samples) == int(0.75 * AUDIO_SAMPLE_RATE)
    assert audio.start_s == 0.5


def test_audio_file_is_not_a_video(media_dir):
    path = synthetic.write_audio(media_dir / "only.wav", synthetic.tone(300, 0.5))
    with pytest.raises(UnsupportedMediaError, match="only.wav.*no video stream"):
        load_video(path)
    assert media_kind(path.read_bytes()) == "audio"


# ---------------------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_formats(media_dir, fmt):
    rgb = synthetic.astronaut()
    path = synthetic.write_image(media_dir / f"astro.{fmt.lower()}", rgb, format=fmt, quality=95)
    out = load_image(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4


def test_alpha_composites_on_white_and_grayscale_expands(media_dir):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(media_dir / "alpha.png")
    out = load_image(media_dir / "alpha.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 7].tolist() == [255, 255, 255]
    Image.fromarray(np.full((6, 5), 77, np.uint8), "L").save(media_dir / "gray.png")
    gray = load_image(media_dir / "gray.png")
    assert gray.shape == (6, 5, 3) and np.all(gray == 77)


def test_exif_orientation_is_applied(media_dir):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255  # white left half of a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(media_dir / "exif.jpg", exif=exif, quality=95)
    out = load_image(media_dir / "exif.jpg")
    assert out.shape[:2] == (40, 20)  # displayed tall
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # the white half is now on top


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path):
    with pytest.raises(MediaNotFoundError, match="nope.mp4: file not found"):
        load_video(tmp_path / "nope.mp4")


def test_text_renamed_mp4_is_unsupported(text_as_mp4):
    with pytest.raises(UnsupportedMediaError, match=r"notes\.mp4: not a recognised .* \(starts with text\)"):
        load_video(text_as_mp4)
    with pytest.raises(UnsupportedMediaError, match="notes.mp4"):
        load_image(text_as_mp4)


def test_truncated_mp4_is_corrupt(truncated_mp4):
    with pytest.raises(CorruptMediaError, match="truncated.mp4"):
        load_video(truncated_mp4)


def test_truncated_stream_is_not_returned_as_complete(media_dir, face_frames):
    # An mkv with its index first decodes up to the cut; the missing half must be reported, not dropped.
    path = synthetic.write_video(media_dir / "long.mkv", np.concatenate([face_frames] * 3), fps=FPS)
    data = path.read_bytes()
    cut = media_dir / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptMediaError, match=r"cut\.mkv: truncated: video frames stop at"):
        load_video(cut, num_frames=4)
    with pytest.raises(CorruptMediaError, match="truncated"):
        list(iter_frames(cut))


def test_zero_frames(media_dir):
    # A video stream that never received a frame, beside a real audio track.
    path = media_dir / "empty.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        audio = out.add_stream("flac", rate=16000)
        audio.layout, audio.format = "mono", "s16"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode())
    with pytest.raises(EmptyMediaError, match="empty.mkv: no video frames"):
        load_video(path)
    (media_dir / "zero.mp4").write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="zero.mp4: file is empty"):
        load_video(media_dir / "zero.mp4")


def test_limits(video_with_audio, astronaut_png):
    with pytest.raises(MediaTooLargeError, match="talk.mp4: file is .* over the limit"):
        load_video(video_with_audio, limits=MediaLimits(max_bytes=1000))
    with pytest.raises(MediaTooLargeError, match=r"talk.mp4: duration 2\.0s is over the limit of 1\.0s"):
        load_video(video_with_audio, limits=MediaLimits(max_duration_s=1.0))
    with pytest.raises(MediaTooLargeError, match="astronaut.png: 512x512 pixels"):
        load_image(astronaut_png, limits=MediaLimits(max_pixels=512 * 511))


def test_bad_arguments(video_with_audio):
    with pytest.raises(ValueError, match="num_frames or fps"):
        load_video(video_with_audio, num_frames=2, fps=2)
    with pytest.raises(ValueError, match="empty or negative time window"):
        load_video(video_with_audio, start_s=3.0)


def test_corrupt_image_bytes(astronaut_png):
    data = astronaut_png.read_bytes()
    with pytest.raises(CorruptMediaError, match="<bytes>"):
        load_image(data[: len(data) // 3])
    assert load_image(io.BytesIO(data).getvalue()).shape == (512, 512, 3)
