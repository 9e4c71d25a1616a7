"""`--tensor-parallel-size` and `--data-parallel-size` on the commands that start the engine: tensor parallelism
over 2 groups of cores gives the same greedy answer as one engine; what vLLM cannot do here is refused in one line
before anything loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _analyze(tiny_dir, media, *extra):
    cmd = [sys.executable, "-m", "mllm.cli", "analyze", str(media), "--model", str(tiny_dir / "emoreason"), "--json",
           "--dtype", "float32", "--max-new-tokens", "48", *map(str, extra)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # two engine starts, one of them with two vLLM workers
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism on CPU needs 2 cores")
def test_tensor_parallel_2_on_cpu_gives_the_same_greedy_answer_as_one_engine(tiny_dir, video_with_audio):
    one = _analyze(tiny_dir, video_with_audio)
    two = _analyze(tiny_dir, video_with_audio, "--tensor-parallel-size", 2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["completion"] and a["completion"] == b["completion"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tensor-parallel-size", "0"], "--tensor-parallel-size: a whole number of at least 1"),
        (["--tensor-parallel-size", "4096"], "this process may use"),
        (["--data-parallel-size", "2"], "--data-parallel-size: GPU only here"),
        (["--engine", "transformers", "--tensor-parallel-size", "2"], "not with --engine transformers"),
    ],
)
def test_what_cannot_be_split_here_is_refused_in_one_line(tiny_dir, astronaut_png, extra, message):
    result = _analyze(tiny_dir, astronaut_png, *extra)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
