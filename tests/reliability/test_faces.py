"""Bad input for `emoreason faces` and damaged state in the face cache. Each case: the exit code and result, one line
naming the file (for refusals), no traceback, and the user's files unchanged; a damaged cache entry is recomputed
(and rewritten whole), an unwritable cache costs one warning, and a run killed while writing leaves the previous
output intact and its litter is cleaned by the next run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mllm.face.pipeline as pipeline
from mllm.face import FaceCache, video_face_track
from mllm.outputs import TMP_TAG
from mllm.samples import synthetic
from tests.reliability.conftest import assert_refused, checksums

FRAMES = 6


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private face cache, and the once-per-process warning re-armed."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EMOREASON_CACHE", str(root))
    monkeypatch.setattr(pipeline, "_warned_unwritable", False)
    return root / "faces"


@pytest.fixture
def user(tmp_path, video_without_audio, astronaut_png):
    """The user's folder: a clip (2 s, 640x360, a face throughout) and a photograph."""
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(video_without_audio, folder / "clip.mp4")
    shutil.copy(astronaut_png, folder / "photo.png")
    return folder


def _ok(result) -> None:
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "error" not in result.err, result.err


def _frames(out: Path) -> list[dict]:
    return json.loads((out / "landmarks.json").read_text())["frames"]


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npz"))


# ---------------------------------------------------------------------------------------------------------------
# Damaged cache entries: every kind is a miss, recomputed to the same result and rewritten whole.


def _rewrite(path: Path, change) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_crc(path):
    """One byte flipped inside the stored landmarks: the zip directory is intact, the CRC check fails on read."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("landmarks_68.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage(path):
    path.write_bytes(b"this is not a zip file at all" * 10)


def _empty(path):
    path.write_bytes(b"")


def _missing_key(path):
    _rewrite(path, lambda a: a.pop("landmarks_68"))


def _wrong_frame_count(path):
    _rewrite(path, lambda a: a.update({k: a[k][:-1] for k in ("timestamps_s", "boxes", "landmarks_68", "found")}))


def _wrong_frame_count_consistent(path):
    """Every per-frame array one frame short, consistently: only the frame count tells."""
    per_frame = ("timestamps_s", "boxes", "landmarks_68", "found", "interpolated", "frame_indices")
    _rewrite(path, lambda a: a.update({k: a[k][:-1] for k in per_frame if k in a}))


def _wrong_shape(path):
    _rewrite(path, lambda a: a.update(landmarks_68=a["landmarks_68"][:, :67]))


def _nan_landmarks(path):
    def change(a):
        a["landmarks_68"] = np.full_like(a["landmarks_68"], np.nan)

    _rewrite(path, change)


def _pickled(path):
    _rewrite(path, lambda a: a.update(boxes=np.array([{"a": 1}], dtype=object)))


DAMAGE = [
    _truncated,
    _bad_crc,
    _garbage,
    _empty,
    _missing_key,
    _wrong_frame_count,
    _wrong_frame_count_consistent,
    _wrong_shape,
    _nan_landmarks,
    _pickled,
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, video_without_audio):
    """One good run of `faces` on the clip, done once: its cache (to damage a copy of) and its frames."""
    from mllm.cli import main

    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOREASON_CACHE", str(root / "cache"))
        assert main(["faces", str(video_without_audio), "--out", str(root / "out"), "--frames", str(FRAMES)]) == 0
    return root / "cache" / "faces", _frames(root / "out")


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_video_cache_entry_is_recomputed(cli, user, cache_dir, pristine, tmp_path, monkeypatch, damage):
    """Each kind of damage, to both entries `faces` keeps (the track and the contact sheet's view of it)."""
    good_cache, good_frames = pristine
    shutil.copytree(good_cache, cache_dir)
    entries = _entries(cache_dir)
    assert len(entries) == 2
    for entry in entries:
        damage(entry)
    before = checksums(user)
    _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "second", "--frames", FRAMES))
    assert _frames(tmp_path / "second") == good_frames
    assert checksums(user) == before
    # Healed: the entries were rewritten whole, and the next run reads them without decoding anything.
    for entry in _entries(cache_dir):
        with np.load(entry) as data:
            assert "landmarks_68" in data.files and data["landmarks_68"].shape == (FRAMES, 68, 2)
    _forbid_decoding(monkeypatch)
    _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "third", "--frames", FRAMES))
    assert _frames(tmp_path / "third") == good_frames


@pytest.mark.parametrize("damage", [_truncated, _bad_crc, _missing_key, _wrong_shape], ids=lambda f: f.__name__[1:])
def test_damaged_image_cache_entry_is_recomputed(cli, user, cache_dir, tmp_path, damage):
    _ok(cli("faces", user / "photo.png", "--out", tmp_path / "first"))
    (entry,) = _entries(cache_dir)
    damage(entry)
    _ok(cli("faces", user / "photo.png", "--out", tmp_path / "second"))
    first, second = (json.loads((tmp_path / o / "landmarks.json").read_text()) for o in ("first", "second"))
    assert second["faces"] == first["faces"] and len(second["faces"]) == 1


@pytest.mark.parametrize("sampling", [{"num_frames": 4}, {}], ids=["num_frames", "every_frame"])
def test_cached_track_with_the_wrong_frame_count_is_recomputed(video_without_audio, tmp_path, sampling):
    """The library path `predict` takes: a consistent entry of the wrong length is a miss, not an IndexError."""
    cache = FaceCache(tmp_path / "cache")
    first = video_face_track(video_without_audio, cache=cache, **sampling)
    (entry,) = _entries(tmp_path / "cache")
    _rewrite(
        entry,
        lambda a: a.update({k: a[k][:-5] for k in ("timestamps_s", "boxes", "landmarks_68", "found", "interpolated")}),
    )
    again = video_face_track(video_without_audio, cache=cache, **sampling)
    assert cache.damaged == 1 and len(again) == len(first)
    np.testing.assert_array_equal(again.landmarks_68, first.landmarks_68)


def _forbid_decoding(monkeypatch):
    import mllm.media as media

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded media on a cache hit")

    for module in (media, pipeline):
        monkeypatch.setattr(module, "load_video", no_decoding)
        monkeypatch.setattr(module, "iter_frames", no_decoding)


def test_cached_run_decodes_nothing_for_its_contact_sheet(cli, user, cache_dir, tmp_path, monkeypatch):
    _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "first", "--frames", 40))
    picture = (tmp_path / "first" / "overlay.png").read_bytes()
    _forbid_decoding(monkeypatch)
    _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "second", "--frames", 40))
    assert _frames(tmp_path / "second") == _frames(tmp_path / "first")
    assert (tmp_path / "second" / "overlay.png").read_bytes() == picture


# ---------------------------------------------------------------------------------------------------------------
# A cache that cannot be written: one warning, the right result


def _cache_under_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go\n")
    monkeypatch.setenv("EMOREASON_CACHE", str(blocker))
    return blocker


def _read_only_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only folder")
    root = tmp_path / "ro-cache"
    (root / "faces").mkdir(parents=True)
    for folder in (root / "faces", root):
        folder.chmod(0o555)
    monkeypatch.setenv("EMOREASON_CACHE", str(root))
    return root


@pytest.mark.parametrize("make_cache", [_cache_under_a_file, _read_only_cache], ids=["under_a_file", "read_only"])
def test_unwritable_cache_warns_once_and_works(cli, user, cache_dir, tmp_path, monkeypatch, caplog, make_cache):
    root = make_cache(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mllm.face.pipeline"):
        _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "a", "--frames", FRAMES))
        _ok(cli("faces", user / "clip.mp4", "--out", tmp_path / "b", "--frames", FRAMES))
        _ok(cli("faces", user / "photo.png", "--out", tmp_path / "c"))
    warnings = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1 and str(root) in warnings[0], warnings
    assert len(_frames(tmp_path / "a")) == FRAMES and _frames(tmp_path / "a") == _frames(tmp_path / "b")
    assert all(f["face_found"] for f in _frames(tmp_path / "a"))


# ---------------------------------------------------------------------------------------------------------------
# Refusals: --out on the user's files, bad numbers, bad media. One line naming the file; nothing touched.


def _out_user_folder(user, tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("\\chapter{One}\n")
    return ["faces", user / "clip.mp4", "--out", tmp_path / "thesis"], ["thesis", "other files"]


def _out_user_file(user, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes\n")
    return ["faces", user / "clip.mp4", "--out", tmp_path / "notes.txt"], ["notes.txt", "not a folder"]


def _out_is_the_media_folder(user, tmp_path):
    return ["faces", user / "photo.png", "--out", user], [str(user), "input"]


def _out_is_the_media(user, tmp_path):
    return ["faces", user / "photo.png", "--out", user / "photo.png"], ["photo.png"]


def _frames_zero(user, tmp_path):
    return ["faces", user / "clip.mp4", "--out", tmp_path / "o", "--frames", 0], ["--frames", ">= 1"]


def _columns_zero(user, tmp_path):
    return ["faces", user / "clip.mp4", "--out", tmp_path / "o", "--columns", 0], ["--columns"]


def _missing_media(user, tmp_path):
    return ["faces", user / "gone.mp4", "--out", tmp_path / "o"], ["gone.mp4", "not found"]


def _text_as_mp4(user, tmp_path):
    (user / "notes.mp4").write_text("meeting notes, not a video\n" * 20)
    return ["faces", user / "notes.mp4", "--out", tmp_path / "o"], ["notes.mp4"]


def _empty_media(user, tmp_path):
    (user / "empty.png").write_bytes(b"")
    return ["faces", user / "empty.png", "--out", tmp_path / "o"], ["empty.png", "empty"]


def _truncated_video(user, tmp_path):
    data = (user / "clip.mp4").read_bytes()
    (user / "cut.mp4").write_bytes(data[: len(data) // 2])
    return ["faces", user / "cut.mp4", "--out", tmp_path / "o", "--no-cache"], ["cut.mp4"]


def _audio_only(user, tmp_path):
    synthetic.write_audio(user / "voice.wav", synthetic.tone(220, 0.5))
    return ["faces", user / "voice.wav", "--out", tmp_path / "o"], ["voice.wav", "audio only"]


def _folder_as_media(user, tmp_path):
    (user / "frames").mkdir()
    return ["faces", user / "frames", "--out", tmp_path / "o"], ["frames", "not a regular file"]


def _unknown_detector(user, tmp_path):
    return ["faces", user / "clip.mp4", "--out", tmp_path / "o", "--detector", "haar"], ["--detector", "haar"]


REFUSALS = [
    _out_user_folder,
    _out_user_file,
    _out_is_the_media_folder,
    _out_is_the_media,
    _frames_zero,
    _columns_zero,
    _missing_media,
    _text_as_mp4,
    _empty_media,
    _truncated_video,
    _audio_only,
    _folder_as_media,
    _unknown_detector,
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda f: f.__name__.strip("_"))
def test_refused_with_one_line_and_nothing_touched(cli, user, cache_dir, tmp_path, case):
    argv, names = case(user, tmp_path)
    before = checksums(tmp_path)
    result = cli(*argv)
    assert_refused(result, *names)
    after = checksums(tmp_path)
    # Nothing of the user's changed; at most a new output folder holding nothing but our marker.
    new = {k for k in after.keys() - before.keys() if not k.startswith(("o", "cache"))}
    assert not new, new
    assert {k: v for k, v in after.items() if k in before} == before


def test_frames_past_the_end_are_clamped_and_said(cli, user, cache_dir, tmp_path):
    result = cli("faces", user / "clip.mp4", "--out", tmp_path / "out", "--frames", 100000)
    _ok(result)
    assert "clip.mp4" in result.err and "clamped" in result.err and "50" in result.err
    frames = _frames(tmp_path / "out")
    assert len(frames) == 50 and [f["index"] for f in frames] == list(range(50))
    assert all(f["face_found"] for f in frames)
    assert "the sheet shows 48 of them" in result.out


# ---------------------------------------------------------------------------------------------------------------
# Killed while writing: the previous output survives, the next run cleans the litter

KILLED_WRITER = """
import os, signal, sys
import mllm.outputs as outputs

def dying(final, data):
    # Half the new file under its temporary name, then SIGKILL: what a kill during the write leaves behind.
    with outputs.atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

outputs.atomic_write_bytes = dying
from mllm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_during_writing_keeps_the_previous_output(cli, user, cache_dir, tmp_path):
    out = tmp_path / "out"
    _ok(cli("faces", user / "clip.mp4", "--out", out, "--frames", FRAMES))
    previous = checksums(out)
    script = tmp_path / "killed_writer.py"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    argv = [sys.executable, str(script), "faces", str(user / "clip.mp4"), "--out", str(out), "--frames", "9"]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    litter = [p.name for p in out.iterdir() if TMP_TAG in p.name]
    assert litter and all(p.startswith(".overlay.png") for p in litter)
    assert {k: v for k, v in checksums(out).items() if TMP_TAG not in k} == previous  # the old files, whole
    _ok(cli("faces", user / "clip.mp4", "--out", out, "--frames", 9))
    assert not [p.name for p in out.iterdir() if TMP_TAG in p.name]
    assert len(_frames(out)) == 9
    from PIL import Image

    with Image.open(out / "overlay.png") as picture:
        picture.verify()
