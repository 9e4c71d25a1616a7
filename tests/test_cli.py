"""The `emoreason` console script, started as users start it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

EMOREASON = str(Path(sys.executable).parent / "emoreason")


def run(*args, **kwargs):
    return subprocess.run([EMOREASON, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("command", [[], ["doctor"], ["faces"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: emoreason" in result.stdout


def test_doctor_prints_versions_and_checks():
    result = run("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "torch",
        "transformers",
        "vLLM",
        "TRL",
        "PEFT",
        "PyAV",
        "dlib",
        "GPU",
        "media (PyAV)",
        "faces (dlib)",
        "torchvision",
    ):
        assert name in result.stdout
    assert "FAILED" not in result.stdout


def test_faces_on_an_image(astronaut_png, tmp_path):
    result = run("faces", astronaut_png, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    assert data["kind"] == "image" and len(data["faces"]) == 1 and data["faces"][0]["primary"]
    assert len(data["faces"][0]["landmarks_68"]) == 68
    with Image.open(tmp_path / "out" / "overlay.png") as im:
        assert im.size == (512, 512)


def test_faces_on_a_video_writes_a_contact_sheet(video_face_gap, tmp_path):
    result = run("faces", video_face_gap, "--frames", 6, "--out", tmp_path / "out", "--columns", 3)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    frames = data["frames"]
    assert len(frames) == 6
    assert [f["face_found"] for f in frames] == [True, True, False, False, True, True]
    assert frames[2]["landmarks_68"] is None and len(frames[0]["landmarks_68"]) == 68
    assert all(f["timestamp_s"] < f2["timestamp_s"] for f, f2 in zip(frames, frames[1:], strict=False))
    with Image.open(tmp_path / "out" / "overlay.png") as im:
        assert im.width == 3 * 320 and im.height > 2 * 180


@pytest.mark.parametrize("bad", ["text", "missing", "truncated"])
def test_faces_bad_input_is_one_line_and_nonzero(bad, text_as_mp4, truncated_mp4, tmp_path):
    media = {"text": text_as_mp4, "missing": tmp_path / "gone.mp4", "truncated": truncated_mp4}[bad]
    result = run("faces", media, "--out", tmp_path / "out")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emoreason faces: error:") and media.name in lines[0]
    assert not (tmp_path / "out").exists()
