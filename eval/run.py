"""`emoreason eval run`: a dataset split answered by the serving engine, one line per sample, resumable.

    emoreason eval run --data data/abaw --model runs/sft/model --split validation --task expr --out runs/eval-abaw-expr
    emoreason eval run ... --shard 2/4 --out runs/eval-abaw-expr-2      # the second of four disjoint parts
    emoreason eval merge runs/eval-abaw-expr-1 ... runs/eval-abaw-expr-4 --out runs/eval-abaw-expr

Inference runs in this process through `serve.engine.Engine` (no HTTP): the encoders batched across the requests
in flight, vLLM on the exported language model, the answer constrained to the task's grammar, greedy. Each answer
is appended to `OUT/predictions.jsonl` as it comes (flushed and synced): the id, the completion, the parsed answer
(or the parse error) and `answer_logprob`, the sum of the log-probabilities of the answer's tokens (those after
`<answer>`), from which ranking scores such as BAH's average precision are made. A rerun with the same settings
skips the ids already there, so a killed run loses at most the answers in flight and never writes one twice; a
line cut short by a kill is dropped on resume. `OUT/run.json` records the settings; a rerun with other settings
into the same folder is refused. A sample whose media cannot be read gets a line saying why and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"


# ---------------------------------------------------------------------------------------------------------------
# The predictions file


def read_predictions(path: Path, repair: bool = False) -> dict[str, dict]:
    """The predictions by id. A last line without its newline (a write cut short) is dropped, and with `repair`
    cut from the file; a malformed complete line or an id twice is an error naming the line."""
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            f.flush()
            os.fsync(f.fileno())
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
            sample = record["id"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{number}: not a prediction line (JSON with an id)") from None
        if sample in out:
            raise ValueError(f"{path}:{number}: id {sample!r} appears twice")
        out[sample] = record
    return out


class Appender:
    """Appends one JSON line per prediction, flushed and synced, so what was answered survives a kill."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False, default=list) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------------------------------------------
# Settings


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    part, sep, total = text.partition("/")
    if not sep or not part.isdigit() or not total.isdigit() or not 1 <= int(part) <= int(total):
        raise ValueError(f"--shard {text!r}: expected I/N with 1 <= I <= N, for example 2/4")
    return int(part), int(total)


def run_settings(args) -> dict:
    from mllm.export import resolve_checkpoint

    shard = parse_shard(args.shard)
    return {
        "data": str(Path(args.data).resolve()),
        "split": args.split,
        "task": args.task,
        "model": str(Path(str(resolve_checkpoint(args.model))).resolve()),
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        "shard": f"{shard[0]}/{shard[1]}",
        "max_new_tokens": args.max_new_tokens,
        "max_samples": args.max_samples,
    }


def load_run(folder) -> dict:
    """The settings of an `eval run` (or `eval merge`) folder, or a one-line error when it is not one."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an `eval run` folder (no {RUN_FILE})")
    return json.loads(path.read_text())


def check_same_run(out: Path, settings: dict) -> None:
    """A folder holding another run's predictions is refused, naming the first setting that differs."""
    from mllm.outputs import atomic_write_text

    path = out / RUN_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            raise ValueError(f"{path}: unreadable; choose a new --out") from None
        for key, value in settings.items():
            if before.get(key) != value:
                raise ValueError(
                    f"{out}: holds a run with {key}={before.get(key)!r}, not {value!r}; choose a new --out"
                )
    elif (out / PREDICTIONS).exists():
        raise ValueError(f"{out}: has {PREDICTIONS} but no {RUN_FILE}; choose a new --out")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Answering


def answer_logprob(pieces: list[tuple[str, list[float] | None]]) -> float | None:
    """Sum of the log-probabilities of the answer's tokens: those whose text starts between the end of `<answer>`
    and the start of `</answer>` (`pieces`: each delta's text and its tokens' log-probabilities)."""
    text = "".join(piece for piece, _ in pieces)
    opening = text.find("<answer>")
    closing = text.find("</answer>", opening + 1)
    if opening < 0 or any(logprobs is None for _, logprobs in pieces):
        return None
    begin, end = opening + len("<answer>"), closing if closing >= 0 else len(text)
    total, seen, offset = 0.0, False, 0
    for piece, logprobs in pieces:
        if begin <= offset < end:
            total += sum(logprobs)
            seen = True
        offset += len(piece)
    return total if seen else None


async def answer_rows(engine, rows, task: str, model: str | None, max_new_tokens: int, appender, concurrency: int,
                      progress=None) -> int:  # fmt: skip
    """Answer `rows` with at most `concurrency` requests in flight, appending each answer as it comes."""
    from serve.engine import RequestError
    from train.data import conversation

    pending = iter(rows)
    done = 0
    unreadable = []

    async def worker():
        nonlocal done
        for row in pending:
            params = engine.sampling_params(task, max_new_tokens, model=model, logprobs=0)
            pieces, started = [], time.perf_counter()
            try:
                async for delta in engine.stream(conversation(row, with_target=False), model=model, task=task,
                                                 params=params):  # fmt: skip
                    pieces.append((delta.text, delta.logprobs))
            except RequestError as exc:  # this sample's media cannot be read: recorded, counted, and the run goes on
                appender.write({"id": row["id"], "task": task, "completion": "", "ok": False,
                                "error": "unreadable_media", "message": str(exc)})  # fmt: skip
                unreadable.append((row["id"], str(exc)))
                if progress is not None:
                    progress.update(1)
                continue
            text = "".join(p for p, _ in pieces)
            appender.write({
                "id": row["id"],
                "task": task,
                "completion": text,
                **engine.parse(text, task, model),
                "answer_logprob": answer_logprob(pieces),
                "seconds": round(time.perf_counter() - started, 3),
            })  # fmt: skip
            done += 1
            if progress is not None:
                progress.update(1)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if unreadable:
        sample, message = unreadable[0]
        print(f"warning: {len(unreadable)} samples could not be read and count as wrong answers (their lines say "
              f"why; remove them from {PREDICTIONS} to retry); first: {sample}: {message}",
              file=sys.stderr)  # fmt: skip
    return done


def _check_label_space(args) -> None:
    """An expression model answers in its own label space; scoring it against another dataset's is refused."""
    from mllm.export import resolve_checkpoint
    from train.data import dataset_label_space

    if args.task != "expr":
        return
    config = Path(str(resolve_checkpoint(args.model))) / "config.json"
    if args.adapter and (Path(args.adapter) / "config.json").is_file():  # a trained folder answers in its own space
        config = Path(args.adapter) / "config.json"
    model_space = json.loads(config.read_text()).get("label_space")
    data_space = dataset_label_space(Path(args.data))
    if model_space != data_space:
        raise ValueError(f"{config}: the model answers in label space {model_space!r}, the dataset {args.data} is "
                         f"labelled in {data_space!r}; evaluate a model trained on this label space")  # fmt: skip


def run(args) -> int:
    from mllm.outputs import claim_output_dir
    from train.data import load_split

    settings = run_settings(args)
    from mllm.output import think_budget
    from train.data import dataset_label_space

    think_budget(args.task, dataset_label_space(Path(args.data)), args.max_new_tokens)  # room for the answer
    rows = load_split(args.data, args.split, [args.task], args.max_samples, seed=0)  # checked before any writing
    _check_label_space(args)
    rows = rows.sort("id")
    part, total = parse_shard(args.shard)
    rows = rows.select(range(part - 1, len(rows), total))
    out = claim_output_dir(args.out, protect=[args.data, args.model, *([args.adapter] if args.adapter else [])],
                           what="--out", kind="eval-run")  # fmt: skip
    check_same_run(out, settings)
    done = read_predictions(out / PREDICTIONS, repair=True)
    todo = rows.filter(lambda sample: sample not in done, input_columns="id") if done else rows
    print(f"{len(rows)} samples in {args.data} [{args.split}] task {args.task}, shard {part}/{total}: "
          f"{len(done)} answered before, {len(todo)} to go", file=sys.stderr, flush=True)  # fmt: skip
    if len(todo):
        _answer(args, todo)
    return 0


def _answer(args, todo) -> None:
    from tqdm import tqdm

    from mllm.predict import stdout_to_stderr
    from serve.engine import Engine

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    out = Path(args.out)
    adapters = {"adapter": args.adapter} if args.adapter else None
    with stdout_to_stderr():
        engine = Engine(args.model, adapters, dtype=args.dtype, enforce_eager=args.enforce_eager or None,
                        max_model_len=args.max_model_len)  # fmt: skip
    appender = Appender(out / PREDICTIONS)
    progress = tqdm(total=len(todo), unit="sample", desc="eval", file=sys.stderr, smoothing=0.1)

    async def main():
        await engine.start()
        try:
            await answer_rows(engine, todo, args.task, "adapter" if args.adapter else None, args.max_new_tokens,
                              appender, args.concurrency, progress)  # fmt: skip
        finally:
            await engine.shutdown()

    try:
        with stdout_to_stderr():  # vLLM's processes inherit the descriptor: stdout stays for the scores
            asyncio.run(main())
    finally:
        progress.close()
        appender.close()


def add_arguments(parser) -> None:
    from mllm.output import TASKS

    parser.add_argument("--data", required=True, help="a dataset folder written by `emoreason data build`")
    parser.add_argument("--model", required=True, help="EmoReason model folder (training's output) or hub id")
    parser.add_argument("--adapter", default=None, help="answer with this trained folder or LoRA adapter")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--task", default="expr", choices=TASKS)
    parser.add_argument("--out", required=True, help="new or empty folder, or an earlier run's to resume")
    parser.add_argument("--shard", default=None, metavar="I/N", help="answer only the I-th of N disjoint parts")
    parser.add_argument("--max-samples", type=int, default=None, help="a random subset of this size (seed 0)")
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="tokens per answer; the reasoning gets what the answer leaves (default 512)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--dtype", default=None, help="vLLM dtype (default: as `serve`)")
    parser.add_argument("--enforce-eager", action="store_true", help="no compiled graphs (fast start)")
    parser.add_argument("--max-model-len", type=int, default=4096)
