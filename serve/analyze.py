"""`emoreason analyze`: media files in, each one's parsed answer and reasoning out, through the serving engine.

    emoreason analyze clip.mp4 --model runs/sft/model                  # label and reasoning, as text
    emoreason analyze a.jpg b.mp4 c.wav --task expr --json > r.jsonl   # one JSON object per file, in order
    emoreason analyze clip.mp4 --overlay overlays/                      # also the frames used, landmarks drawn

Every file is decoded and encoded (faces, landmarks, the encoders) before vLLM starts, so a bad file is reported
at once, naming it, and nothing is generated; then all files are answered together by the engine (`Engine`), with
the answer constrained to the task's grammar, greedy. `--engine transformers` answers with the unconstrained
`generate` reference instead (`mllm.predict`).

stdout carries the results alone: while the engine runs, file descriptor 1 points at stderr, so vLLM's logs and
its subprocesses' output land there. Exit status: 0 when every answer parsed, 1 on bad input, 3 when an answer
did not parse (possible only with `--engine transformers`, or a `--max-new-tokens` too small for the grammar).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from mllm.output import TASKS

HELP = "Answer for image, video or audio files through the serving engine: the label and its reasoning."
MODEL_ENV = "EMOREASON_MODEL"


def _from_file(media: str, exc: Exception) -> str:
    """The processor's message names the part, then the file: start it at the file, which is what users gave."""
    text = str(exc)
    return text[text.find(media) :] if media in text else f"{media}: {text}"


def _engine_answers(args, media: list[str]) -> tuple[list[str], str]:
    """Completions through the serving engine; bad media are refused before vLLM starts. One status line per phase
    on stderr; the libraries' output in a log file (`serve.startup`), or on stderr with --verbose."""
    from mllm.predict import build_messages, stdout_to_stderr
    from serve.engine import Engine, parallel_arguments
    from serve.startup import StartupLog

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the results
    verbose = args.verbose or getattr(args, "verbose_top", False)
    with StartupLog("analyze", verbose=verbose) as log, stdout_to_stderr():
        # One request: compiling graphs (about a minute on CPU) would cost more than it saves, unless asked for.
        engine = Engine(args.model, dtype=args.dtype, enforce_eager=not args.compile, max_model_len=args.max_model_len,
                        status=log.phase, **parallel_arguments(args))  # fmt: skip
        conversations = [build_messages(m, args.task, engine.label_space) for m in media]
        log.phase(f"reading {len(media)} file(s): faces tracked, media encoded")
        embeds = engine.encode_now(conversations)
        refused = [(m, e) for m, e in zip(media, embeds, strict=True) if isinstance(e, Exception)]
        if refused:
            for m, e in refused[1:]:
                print(f"emoreason analyze: error: {_from_file(m, e)}", file=sys.stderr)
            raise ValueError(_from_file(*refused[0]))

        async def answer_all() -> list[str]:
            await engine.start()
            log.phase("answering")
            try:
                params = [engine.sampling_params(args.task, args.max_new_tokens) for _ in media]
                done = await asyncio.gather(
                    *(engine.complete(c, task=args.task, params=p, embeds=e)
                      for c, p, e in zip(conversations, params, embeds, strict=True))
                )  # fmt: skip
                return [c.text for c in done]
            finally:
                await engine.shutdown()

        return asyncio.run(answer_all()), engine.label_space


def analyze(args) -> list[dict]:
    from mllm.predict import check_media, reference_completions
    from serve.engine import parsed_result

    media = [str(m) for m in args.media]
    for m in media:
        check_media(m)
    if args.engine == "transformers":
        texts, label_space = reference_completions(args.model, media, args.task, args.max_new_tokens)
    else:
        texts, label_space = _engine_answers(args, media)
    results = []
    for m, text in zip(media, texts, strict=True):
        parsed = parsed_result(text, args.task, label_space)
        results.append({"media": m, "model": str(args.model), "engine": args.engine, "completion": text, **parsed})
    return results


def _write_overlays(args, out: Path, media: list[str]) -> list[Path]:
    from mllm.checkpoints import resolve_checkpoint
    from mllm.outputs import atomic_path
    from mllm.processor import EmoReasonProcessor
    from serve.overlay import frames_used

    processor = EmoReasonProcessor.from_pretrained(resolve_checkpoint(args.model))
    written = []
    for i, m in enumerate(media):
        picture = frames_used(processor, m)
        if picture is None:
            continue
        final = out / f"{i:03d}-{Path(m).stem}.png"
        with atomic_path(final) as tmp:
            picture.save(tmp, format="PNG")
        written.append(final)
    return written


def printable(text: str) -> str:
    """A model's text as a terminal may show it: control characters (escape sequences, carriage returns, bells)
    written as escapes, line breaks kept."""
    return "".join(c if c == "\n" or c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _text(result: dict) -> str:
    head = f"{result['media']}  {result['task']}: "
    if not result["ok"]:
        why = f"no parsable answer ({result['error']}: {result['message']})"
        return head + why + f"\n  completion: {printable(result['completion'])}"
    task = result["task"]
    if task == "expr":
        answer = result["label"]
    elif task == "au":
        answer = ", ".join(result["aus"]) or "no AU active"
    elif task == "va":
        answer = f"valence {result['valence']:+.2f}, arousal {result['arousal']:+.2f}"
    else:
        answer = f"ambivalence/hesitancy {result['ambivalence_hesitancy']}"
    return head + answer + "\n  reasoning: " + (printable(result["think"].strip()) or "(none)")


def add_arguments(parser) -> None:
    parser.add_argument("media", nargs="+", help="image, video or audio files")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV),
                        help=f"EmoReason model folder or hub id (default: ${MODEL_ENV})")  # fmt: skip
    parser.add_argument("--task", default="expr", choices=TASKS, help="the question asked (default: expr)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of text")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers"],
                        help="vllm: the serving engine, constrained (default); transformers: generate")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="tokens per answer; the reasoning gets what the answer leaves (default 512)")  # fmt: skip
    parser.add_argument("--overlay", default=None, metavar="DIR",
                        help="write the frames used, with face box and landmarks, as PNGs into DIR")  # fmt: skip
    parser.add_argument("--dtype", default=None, help="vLLM dtype (default: as `serve`)")
    parser.add_argument("--compile", action="store_true", help="compiled graphs (slower start; for many files)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    from serve.engine import add_parallel_arguments

    add_parallel_arguments(parser)


def run(args) -> int:
    if not args.model:
        raise ValueError(f"no model: pass --model DIR or set {MODEL_ENV} (`make demo` builds a tiny random one)")
    from mllm.output import think_budget

    think_budget(args.task, "abaw_expr", args.max_new_tokens)  # the longest label space's room: refused at once
    if args.engine == "transformers" and (args.tensor_parallel_size != 1 or args.data_parallel_size != 1):
        raise ValueError("--tensor-parallel-size / --data-parallel-size split vLLM's model: not with --engine "
                         "transformers")  # fmt: skip
    overlay = None
    if args.overlay:  # claimed before any work: a folder of other files is refused at once
        from mllm.outputs import claim_output_dir

        overlay = claim_output_dir(args.overlay, protect=[args.model, *args.media], what="--overlay", kind="overlay")
    results = analyze(args)
    for result in results:
        print(json.dumps(result, default=list) if args.json else _text(result), flush=True)
    if overlay is not None:
        for path in _write_overlays(args, overlay, [r["media"] for r in results]):
            print(f"overlay: {path}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 3
