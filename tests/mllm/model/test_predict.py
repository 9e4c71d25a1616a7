import json
import subprocess
import sys
from pathlib import Path

import pytest

from mllm.output import parse
from mllm.predict import predict


def test_predict_with_transformers_reports_the_parse(tiny_dir, video_with_audio):
    result = predict(tiny_dir / "emoreason", str(video_with_audio), engine="transformers", max_new_tokens=8)
    # An untrained model, unconstrained: whatever it says is reported with the parser's verdict.
    assert result["engine"] == "transformers" and isinstance(result["completion"], str)
    assert result["ok"] == parse(result["completion"], "expr").ok


@pytest.mark.slow  # starts its own vLLM engine in a subprocess (about 40 s)
def test_predict_cli_with_vllm_gives_a_parsed_answer(tiny_dir, video_with_audio, tmp_path):
    cli = str(Path(sys.executable).parent / "emoreason")
    model_dir = tmp_path / "model"
    subprocess.run(["cp", "-r", str(tiny_dir / "emoreason"), str(model_dir)], check=True)
    out = subprocess.run(
        [cli, "predict", "--model", str(model_dir), str(video_with_audio), "--max-new-tokens", "64"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # stdout is the result alone: vLLM's logs went to stderr
    assert result["ok"] and result["answer"] in (
        "Neutral",
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Sadness",
        "Surprise",
        "Other",
    )
    assert parse(result["completion"], "expr").answer == result["answer"]
    assert (model_dir / "served" / "language_model" / "config.json").exists()
    assert (model_dir / "served" / "language_model" / ".emoreason-export.json").exists()  # complete, keyed export


def test_stdout_to_stderr_covers_subprocesses_and_c_level_writes():
    """What runs inside (the engine, its subprocesses, C libraries writing to fd 1) reaches stderr; stdout gets only
    what is printed after."""
    code = (
        "import os, sys\n"
        "from mllm.predict import stdout_to_stderr\n"
        "with stdout_to_stderr():\n"
        "    print('python print inside', flush=True)\n"
        "    os.write(1, b'fd write inside\\n')\n"
        "    os.system('echo child process inside')\n"
        "print('result')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "result\n"
    for line in ("python print inside", "fd write inside", "child process inside"):
        assert line in out.stderr
