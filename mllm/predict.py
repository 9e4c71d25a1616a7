"""`emoreason predict`: one media file in, the model's completion and its parsed answer out.

    emoreason predict --model tiny/emoreason clip.mp4 [--task expr] [--engine vllm|transformers]

Both engines start from the same embeddings (`build_inputs_embeds`). `vllm` runs the exported language model fed
`prompt_embeds`, with the answer constrained to the task's grammar (structured outputs), so even an untrained
model returns a well-formed answer; `transformers` runs `generate` unconstrained.
"""

from __future__ import annotations

import json
import os
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


def exported_language_model(model, tokenizer, model_dir: Path) -> Path:
    """The exported causal LM for a checkpoint, written once next to it (re-exported if the weights are newer)."""
    from mllm.export import export_language_model

    out = Path(model_dir) / "served" / "language_model"
    weights = Path(model_dir) / "model.safetensors"
    stamp = out / "config.json"
    if not stamp.exists() or (weights.exists() and weights.stat().st_mtime > stamp.stat().st_mtime):
        export_language_model(model, tokenizer, out)
    return out


def predict(model_dir, media: str, task: str = "expr", engine: str = "vllm", max_new_tokens: int = 160) -> dict:
    import torch

    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.output import answer_regex, parse
    from mllm.processor import EmoReasonProcessor

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")
    if engine not in ("vllm", "transformers"):
        raise ValueError(f"unknown engine {engine!r}; valid: vllm, transformers")
    model = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    batch = processor([build_messages(media, task, model.config.label_space)])
    if engine == "transformers":
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[0]
        text = processor.decode(tokens)
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs to stdout, where the result goes
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        with torch.no_grad():
            embeds = model.build_inputs_embeds(**batch)[0]
        llm = LLM(
            model=str(exported_language_model(model, processor.tokenizer, Path(model_dir))),
            enable_prompt_embeds=True,
            dtype="float32" if not torch.cuda.is_available() else "auto",
            enforce_eager=not torch.cuda.is_available(),
            max_model_len=max(1024, embeds.shape[0] + max_new_tokens + 16),
            seed=0,
        )
        regex = answer_regex(task, model.config.label_space, max_think_chars=max_new_tokens // 2)
        params = SamplingParams(
            temperature=0, max_tokens=max_new_tokens, structured_outputs=StructuredOutputsParams(regex=regex)
        )
        text = llm.generate([{"prompt_embeds": embeds}], params, use_tqdm=False)[0].outputs[0].text
        llm.llm_engine.engine_core.shutdown()
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


def add_arguments(parser) -> None:
    parser.add_argument("media", help="image, video or audio file")
    parser.add_argument("--model", required=True, help="EmoReason checkpoint folder")
    parser.add_argument("--task", default="expr", choices=TASKS)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, default=160)


def run(args) -> int:
    result = predict(args.model, args.media, args.task, args.engine, args.max_new_tokens)
    print(json.dumps(result, indent=1, default=list))
    return 0 if result["ok"] else 3
