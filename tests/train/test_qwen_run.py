"""A Qwen run from end to end, for each Qwen-VL base, as users run it: `emoreason train sft` on the tiny checkpoint,
`train grpo` from its output, then the trained folder answering through `emoreason analyze`, evaluated on the
held-out photos with `emoreason eval run`, and answering through `emoreason serve` with the official `openai` client
(all vLLM, fed our embeddings as image items with their grids)."""

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm.cli import main
from mllm.labels import label_space
from mllm.output import parse
from tests.conftest import REPO, _free_port, sft_args

GRPO_RECIPE = REPO / "train" / "recipes" / "grpo_tiny_cpu.yaml"
CLI = str(Path(sys.executable).parent / "emoreason")
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def qwen_runs(request, expression_data, tmp_path_factory):
    tiny = request.getfixturevalue(f"tiny_{request.param}_dir")
    root = tmp_path_factory.mktemp("qwen-runs")
    sft = root / "sft"
    assert main(sft_args(tiny / "emoreason", expression_data, sft, "--max_steps", 6)) == 0
    grpo = root / "grpo"
    args = ["train", "grpo", "--config", GRPO_RECIPE, "--model", sft, "--data", expression_data, "--output_dir", grpo,
            "--report_to", "none", "--log_completions", "false", "--max_steps", 2, "--num_generations", 4,
            "--per_device_train_batch_size", 4, "--max_completion_length", 24]  # fmt: skip
    assert main(list(map(str, args))) == 0
    return sft, grpo


@pytest.mark.slow  # two short trainings and two engine starts (about 3 minutes)
def test_sft_then_grpo_on_qwen_then_analyze_evaluate_and_serve(
    qwen_runs, expression_data, astronaut_png, video_with_audio, tmp_path
):
    sft, grpo = qwen_runs
    sft_report = json.loads((sft / "model" / "train_report.json").read_text())
    grpo_report = json.loads((grpo / "model" / "train_report.json").read_text())
    assert sft_report["global_step"] == 6 and grpo_report["global_step"] == 2 and grpo_report["stage"] == "grpo"
    losses = [h["loss"] for h in sft_report["log_history"] if "loss" in h]
    assert losses and all(loss == loss for loss in losses)  # finite: the M-RoPE forward trains
    model = grpo / "model"
    base_type = json.loads((model / "config.json").read_text())["base_config"]["model_type"]
    assert base_type in ("qwen2_5_vl", "qwen3_vl")

    # analyze: the trained folder, served as the Qwen base itself, answers for a photo and a clip with speech.
    out = subprocess.run([CLI, "analyze", str(astronaut_png), str(video_with_audio), "--model", str(model), "--json",
                          "--dtype", "float32"], capture_output=True, text=True, timeout=900,
                         env={**ENV, "EMOREASON_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["media"] for r in results] == [str(astronaut_png), str(video_with_audio)]
    for r in results:
        assert r["ok"] and r["label"] in label_space("abaw_expr") and parse(r["completion"], "expr").ok
    # eval run: the held-out split scored through the same engine.
    out = subprocess.run([CLI, "eval", "run", "--data", str(expression_data), "--model", str(model), "--split", "test",
                          "--task", "expr", "--out", str(tmp_path / "eval"), "--dtype", "float32", "--enforce-eager"],
                         capture_output=True, text=True, timeout=900,
                         env={**ENV, "EMOREASON_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "accuracy" in json.dumps(metrics) and "macro_f1" in json.dumps(metrics)
    served_as = json.loads((model / "served" / "language_model" / "config.json").read_text())["architectures"]
    assert served_as == [{"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                          "qwen3_vl": "Qwen3VLForConditionalGeneration"}[base_type]]  # fmt: skip

    # serve: the official client, an image sent inline.
    import httpx
    import openai

    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "mllm.cli", "serve", "--model", str(model), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--port", str(port), "--max-tokens", "128"]  # fmt: skip
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "EMOREASON_CACHE": str(tmp_path / "cache")}, stdout=sink,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        photo = base64.b64encode(Path(astronaut_png).read_bytes()).decode()
        # a run's model folder (OUTPUT_DIR/model) is served under the run's name
        assert [m.id for m in client.models.list().data] == [grpo.name]
        reply = client.chat.completions.create(
            model=grpo.name,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{photo}"}},
                        {"type": "text", "text": "Which facial expression does the person show?"},
                    ],
                }
            ],
            extra_body={"task": "expr"},
        )  # fmt: skip  (no max_tokens: the server's default, within its --max-tokens 128)
        answer = reply.model_extra["emoreason"]
        assert answer["ok"] and answer["label"] in label_space("abaw_expr")
        assert parse(reply.choices[0].message.content, "expr").answer == answer["label"]
        assert reply.usage.prompt_tokens > 4  # the image's tokens counted as the model sees them
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
