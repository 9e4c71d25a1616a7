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
    result = json.loads(out.stdout[out.stdout.index("{") :])
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
