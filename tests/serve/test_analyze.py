"""`emoreason analyze` as users run it (the console script, a fresh process): answers for several files in order
through the serving engine, stdout holding only the results; bad input refused in one line before vLLM starts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mllm.labels import label_space
from mllm.output import parse
from mllm.samples import synthetic
from serve.analyze import _text

CLI = str(Path(sys.executable).parent / "emoreason")


def _run(*args, env=None, timeout=600):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    return subprocess.run([CLI, "analyze", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A copy, so the export analyze writes under MODEL/served/ does not touch the shared checkpoint."""
    return Path(shutil.copytree(tiny_dir / "emoreason", tmp_path / "model", ignore=shutil.ignore_patterns("served")))


@pytest.mark.slow  # starts its own vLLM engine (about 40 s)
def test_several_files_answered_in_order_with_overlays(model_copy, astronaut_png, video_with_audio, tmp_path):
    wav = synthetic.write_audio(tmp_path / "speech.wav", synthetic.speech_or_tone("Well, maybe.", 1.5, 440))
    media = [astronaut_png, video_with_audio, wav]
    cache = tmp_path / "cache"
    out = _run(*media, "--model", model_copy, "--json", "--overlay", tmp_path / "ov", "--dtype", "float32",
               env={"EMOREASON_CACHE": str(cache)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines()]  # stdout is the results alone
    # stderr: one status line per phase (with elapsed time) and the overlays written; nothing of vLLM's, no
    # warning at exit. vLLM's output is in the log file the first line names.
    lines = out.stderr.splitlines()
    assert all(line.startswith(("emoreason analyze: [", "overlay: ")) for line in lines), out.stderr[-3000:]
    phases = [line.split("] ", 1)[1] for line in lines if line.startswith("emoreason analyze: [")]
    assert phases[0].startswith("loading the model") and phases[-1] == "answering"
    assert any(p.startswith("starting vLLM") for p in phases)
    log = next((cache / "logs").glob("analyze-*.log"))
    assert str(log) in lines[0] and "checkpoint shards" in log.read_text()  # vLLM's worker loading the model
    assert [r["media"] for r in results] == [str(m) for m in media]
    for r in results:
        assert r["ok"] and r["task"] == "expr" and r["label"] in label_space("abaw_expr")
        assert parse(r["completion"], "expr").answer == r["label"]  # constrained: always parses
    # One picture per file with frames (the photo, the clip's 8 frames on a sheet), none for audio.
    pictures = sorted(p.name for p in (tmp_path / "ov").glob("*.png"))
    assert pictures == ["000-astronaut.png", "001-talk.png"]
    assert Image.open(tmp_path / "ov" / "000-astronaut.png").size == (512, 512)
    assert Image.open(tmp_path / "ov" / "001-talk.png").size[0] == 4 * 240
    assert not [p for p in tmp_path.rglob("*") if ".emoreason-tmp-" in p.name]


def test_a_bad_file_is_refused_before_vllm_starts(model_copy, astronaut_png, text_as_mp4):
    out = _run(astronaut_png, text_as_mp4, "--model", model_copy, "--json", timeout=300)
    assert out.returncode == 1 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(text_as_mp4) in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "EngineCore" not in out.stderr  # refused while encoding, before vLLM was started


def test_no_model_and_a_foreign_overlay_folder_are_refused_at_once(astronaut_png, model_copy, tmp_path):
    out = _run(astronaut_png, env={"EMOREASON_MODEL": ""}, timeout=120)
    assert out.returncode == 1 and out.stdout == "" and "EMOREASON_MODEL" in out.stderr
    theirs = tmp_path / "photos"
    theirs.mkdir()
    (theirs / "holiday.jpg").write_bytes(b"not ours")
    out = _run(astronaut_png, "--model", model_copy, "--overlay", theirs, timeout=120)
    assert out.returncode == 1 and "folder of other files" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["holiday.jpg"]
    assert not (model_copy / "served").exists()  # refused before any export


def test_text_output_states_the_answer_and_its_reasoning():
    ok = {"media": "a.jpg", "task": "expr", "ok": True, "label": "Happiness", "think": " AU6 and AU12 are active. "}
    assert _text(ok) == "a.jpg  expr: Happiness\n  reasoning: AU6 and AU12 are active."
    va = {"media": "b.mp4", "task": "va", "ok": True, "valence": 0.5, "arousal": -0.25, "think": ""}
    assert _text(va) == "b.mp4  va: valence +0.50, arousal -0.25\n  reasoning: (none)"
    bad = {"media": "c.wav", "task": "au", "ok": False, "error": "format", "message": "no <answer>", "completion": "x"}
    assert _text(bad) == "c.wav  au: no parsable answer (format: no <answer>)\n  completion: x"
