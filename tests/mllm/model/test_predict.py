import subprocess
import sys

from mllm.output import parse
from mllm.predict import predict


def test_the_transformers_reference_reports_the_parse(tiny_dir, video_with_audio):
    result = predict(tiny_dir / "emoreason", str(video_with_audio), max_new_tokens=8)
    # An untrained model, unconstrained: whatever it says is reported with the parser's verdict.
    assert isinstance(result["completion"], str) and result["completion"]
    assert result["ok"] == parse(result["completion"], "expr").ok


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
