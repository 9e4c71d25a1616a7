"""The transformers reference answer: one media file in, `generate`'s completion and its parse out.

    from mllm.predict import predict
    predict("tiny/emoreason", "clip.mp4", task="expr")       # {"completion": ..., "ok": ..., "answer": ...}

This is the unconstrained path the serving engine is checked against (its greedy answer must equal this one) and
what `emoreason analyze --engine transformers` runs. Users' one-shot command is `emoreason analyze`
(`serve/analyze.py`), which answers through the serving engine.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from mllm.labels import label_space as labels_of
from mllm.output import TASKS, question


def _part(media: str) -> dict:
    from mllm.media import media_kind

    kind = media_kind(media)
    return {"type": kind, kind: str(media)}


def build_messages(media: str | Path, task: str, label_space: str = "abaw_expr") -> list[dict]:
    """The user turn, asked exactly as the data builders ask it in training prompts."""
    labels = labels_of(label_space) if task == "expr" else ()
    return [{"role": "user", "content": [_part(str(media)), {"type": "text", "text": question(task, labels)}]}]


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to file descriptor 1 to stderr for the duration (this process's prints and C
    libraries, and the engine's subprocesses, which inherit the descriptor), so that stdout holds only the result."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_media(media: str | Path) -> None:
    """A missing or non-file media path fails at once, before any model is loaded."""
    if not Path(media).is_file():
        raise FileNotFoundError(f"{media}: no such file" if not Path(media).exists() else f"{media}: not a file")


def reference_completions(
    model_dir, media: list, task: str = "expr", max_new_tokens: int = 160
) -> tuple[list[str], str]:
    """Greedy `generate` completions, one per media file, from the checkpoint with its adapter merged, and the
    checkpoint's label space."""
    from mllm.checkpoints import check_checkpoint, resolve_checkpoint

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")
    for m in media:  # before loading the model, which takes a while for a real one
        check_media(m)
    model_dir = resolve_checkpoint(model_dir)  # a missing folder fails here, at once
    check_checkpoint(model_dir, processor=True)

    from mllm.export import load_model  # the slow imports come after the checks, so bad input fails at once
    from mllm.processor import EmoReasonProcessor

    model = load_model(model_dir, adapter="merge").eval()
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    texts = []
    for m in media:
        batch = processor([build_messages(m, task, model.config.label_space)])
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[0]
        texts.append(processor.decode(tokens))
    return texts, model.config.label_space


def predict(model_dir, media: str, task: str = "expr", max_new_tokens: int = 160) -> dict:
    """One file's reference completion with the parser's verdict."""
    from mllm.output import parse

    texts, label_space = reference_completions(model_dir, [media], task, max_new_tokens)
    text = texts[0]
    result = parse(text, task, label_space)
    return {
        "media": str(media),
        "task": task,
        "completion": text,
        "ok": result.ok,
        "answer": result.answer if result.ok else None,
        "error": None if result.ok else f"{result.error}: {result.message}",
    }
