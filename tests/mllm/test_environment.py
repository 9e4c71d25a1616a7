"""The process environment `import mllm` prepares: torch's compiled-kernel cache kept apart per forced CPU capability
(torch reuses an AVX-512 kernel under ATEN_CPU_CAPABILITY=default, where it fails to compile)."""

import os
import subprocess
import sys

import pytest

PRINT = "import os, mllm; print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'))"


def _cache_dir(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", PRINT], env={**base, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_a_forced_capability_gets_its_own_kernel_cache(capability):
    folder = _cache_dir(ATEN_CPU_CAPABILITY=capability)
    assert os.path.basename(folder).startswith("torchinductor_") and folder.endswith("_" + capability)


def test_the_native_capability_and_a_chosen_folder_are_left_alone(tmp_path):
    assert _cache_dir() == "None"  # torch's own default
    assert _cache_dir(ATEN_CPU_CAPABILITY="default", TORCHINDUCTOR_CACHE_DIR=str(tmp_path)) == str(tmp_path)
