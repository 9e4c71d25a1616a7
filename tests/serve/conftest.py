"""One live `emoreason serve` per test session: the tiny checkpoint, plus the shared SFT run's final folder served
as the adapter "trained" (its own LoRA and new modules), on loopback, with an API key, a 2 MB body limit and the
Gradio demo at /demo."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tiny_dir, sft_run, tmp_path_factory):
    import httpx

    pytest.importorskip("vllm")
    port = _free_port()
    allowed = tmp_path_factory.mktemp("allowed-media")
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    # fp32 without compiled graphs: exact against transformers, and a fast start (bf16 compiled is the default).
    cmd = [sys.executable, "-m", "mllm.cli", "serve", "--model", str(tiny_dir / "emoreason"),
           "--adapter", f"trained={sft_run / 'model'}", "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--port", str(port), "--api-key", API_KEY, "--max-body-mb", "2",
           "--allow-media-dir", str(allowed), "--max-tokens", "256", "--demo"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start in 300 s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    yield {"url": url, "key": API_KEY, "allowed": allowed, "proc": proc, "log": log}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0, timeout=120)
