"""`emoreason predict`: one media file in, the model's completion and its parsed answer out.

    emoreason predict --model tiny/emoreason clip.mp4 [--task expr] [--engine vllm|transformers]

Both engines start from the same embeddings (`build_inputs_embeds`). `vllm` runs the exported language model fed
`prompt_embeds`, with the answer constrained to the task's grammar (structured outputs), so even an untrained
model returns a well-formed answer; `transformers` runs `generate` unconstrained.

stdout carries the JSON result alone (`predict ... > r.json` is valid JSON): while the engine runs, file descriptor
1 points at stderr, so vLLM's logs and its subprocesses' output land there. The model folder is checked before the
slow imports (a missing folder or file fails at once, naming it), and the exported language model under `served/`
is keyed by the checkpoint's content (`mllm.export.served_language_model`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from mllm.labels import label_space as labels_of
from mllm.output import TASKS, question

HELP = "Answer for one image, video or audio file: the completion and its parsed answer."


def _part(media: str) -> dict:
    from mllm.media import media_kind

    kind = media_kind(media)
    return {"type": kind, kind: str(media)}


def build_messages(media: str, task: str, label_space: str = "abaw_expr") -> list[dict]:
    """The user turn, asked exactly as the data builders ask it in training prompts."""
    labels = labels_of(label_space) if task == "expr" else ()
    return [{"role": "user", "content": [_part(media), {"type": "text", "text": question(task, labels)}]}]


def exported_model(model, tokenizer, model_dir: Path) -> tuple[Path, Path | None]:
    """The exported causal LM for a checkpoint and its own LoRA adapter (None without one), kept under `served/`
    and keyed by the checkpoint's content (see `mllm.export.served_model`): reused while the files are unchanged,
    rebuilt when they change (whatever their modification times) or when the export is incomplete or damaged."""
    from mllm.export import served_model

    return served_model(model_dir, lambda: (model, tokenizer))


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


def predict(model_dir, media: str, task: str = "expr", engine: str = "vllm", max_new_tokens: int = 160) -> dict:
    from mllm.export import check_checkpoint, resolve_checkpoint

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")
    if engine not in ("vllm", "transformers"):
        raise ValueError(f"unknown engine {engine!r}; valid: vllm, transformers")
    if not Path(media).is_file():  # before loading the model, which takes a while for a real one
        raise FileNotFoundError(f"{media}: no such file" if not Path(media).exists() else f"{media}: not a file")
    model_dir = resolve_checkpoint(model_dir)  # a missing folder fails here, at once
    check_checkpoint(model_dir, processor=True)

    import torch  # the slow imports come after the checks, so bad input fails at once

    from mllm.export import load_model
    from mllm.output import answer_regex, parse
    from mllm.processor import EmoReasonProcessor

    # A trained checkpoint's LoRA adapter: merged for transformers; for vLLM, served on the unmerged language model.
    model = load_model(model_dir, adapter="merge" if engine == "transformers" else "ignore").eval()
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    batch = processor([build_messages(media, task, model.config.label_space)])
    if engine == "transformers":
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[0]
        text = processor.decode(tokens)
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the result
        with torch.no_grad():
            embeds = model.build_inputs_embeds(**batch)[0]
        lm_dir, lora_dir = exported_model(model, processor.tokenizer, model_dir)
        regex = answer_regex(task, model.config.label_space, max_think_chars=max_new_tokens // 2)
        with stdout_to_stderr():
            text = _generate_with_vllm(lm_dir, embeds, regex, max_new_tokens, lora_dir)
    result = parse(text, task, model.config.label_space)
    return {
        "media": str(media),
        "task": task,
        "engine": engine,
        "completion": text,
        "ok": result.ok,
        "answer": result.answer if result.ok else None,
        "error": None if result.ok else f"{result.error}: {result.message}",
    }


def _generate_with_vllm(lm_dir: Path, embeds, regex: str, max_new_tokens: int, lora_dir: Path | None = None) -> str:
    import json

    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    lora = {}
    if lora_dir is not None:
        rank = json.loads((lora_dir / "adapter_config.json").read_text())["r"]
        # vLLM takes only these ranks as its LoRA slot size.
        slot = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)
        lora = {"enable_lora": True, "max_lora_rank": slot, "max_loras": 1}

    llm = LLM(
        model=str(lm_dir),
        enable_prompt_embeds=True,
        dtype="float32" if not torch.cuda.is_available() else "auto",
        enforce_eager=not torch.cuda.is_available(),
        max_model_len=max(1024, embeds.shape[0] + max_new_tokens + 16),
        seed=0,
        **lora,
    )
    try:
        params = SamplingParams(
            temperature=0, max_tokens=max_new_tokens, structured_outputs=StructuredOutputsParams(regex=regex)
        )
        request = LoRARequest("adapter", 1, str(lora_dir)) if lora_dir is not None else None
        outputs = llm.generate([{"prompt_embeds": embeds}], params, lora_request=request, use_tqdm=False)
        return outputs[0].outputs[0].text
    finally:
        llm.llm_engine.engine_core.shutdown()


def add_arguments(parser) -> None:
    parser.add_argument("media", help="image, video or audio file")
    parser.add_argument("--model", required=True, help="EmoReason checkpoint folder (or an org/name hub id)")
    parser.add_argument("--task", default="expr", choices=TASKS)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, default=160)


def run(args) -> int:
    result = predict(args.model, args.media, args.task, args.engine, args.max_new_tokens)
    print(json.dumps(result, indent=1, default=list))
    return 0 if result["ok"] else 3
