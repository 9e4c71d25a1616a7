"""EmoReason core: media decoding, faces, the model, its processor and the output grammar.

    from mllm import EmoReasonForConditionalGeneration, EmoReasonProcessor, parse

    model = EmoReasonForConditionalGeneration.from_pretrained("runs/sft/emoreason")
    processor = EmoReasonProcessor.from_pretrained("runs/sft/emoreason")

Names are imported on first use (PEP 562), so `import mllm` and `emoreason --help` stay fast.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING


def _inductor_cache_per_cpu_capability() -> None:
    """torch's compiled-kernel cache (used by vLLM's sampler for log-probabilities, and by compiled graphs) is not
    keyed by ATEN_CPU_CAPABILITY: a kernel built with AVX-512 code is reused under `=default` and fails to compile
    (measured: `at::vec` undeclared). Where the capability is forced and no cache folder is set, each gets its own."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if capability and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        import getpass
        import tempfile

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        folder = f"torchinductor_{user}_{capability}".replace(os.sep, "_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), folder)


_inductor_cache_per_cpu_capability()

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "EmoReasonConfig": "mllm.config",
    "EmoReasonForConditionalGeneration": "mllm.model",
    "EmoReasonProcessor": "mllm.processor",
    "parse": "mllm.output",
    "answer_regex": "mllm.output",
    "format_completion": "mllm.output",
    "question": "mllm.output",
    "Parsed": "mllm.output",
    "ParseError": "mllm.output",
    "load_video": "mllm.media",
    "load_audio": "mllm.media",
    "load_image": "mllm.media",
    "MediaError": "mllm.media",
    "image_faces": "mllm.face",
    "video_face_track": "mllm.face",
    "align_face": "mllm.face",
    "label_space": "mllm.labels",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for editors and type checkers; at run time the names load lazily
    from mllm.config import EmoReasonConfig  # noqa: F401
    from mllm.face import align_face, image_faces, video_face_track  # noqa: F401
    from mllm.labels import label_space  # noqa: F401
    from mllm.media import MediaError, load_audio, load_image, load_video  # noqa: F401
    from mllm.model import EmoReasonForConditionalGeneration  # noqa: F401
    from mllm.output import Parsed, ParseError, answer_regex, format_completion, parse, question  # noqa: F401
    from mllm.processor import EmoReasonProcessor  # noqa: F401


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
