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


def read_predictions(path: Path, repair: bool = False, *, task: str | None = None, labels: tuple[str, ...] = (),
                     ids=None, ids_from: str = "the dataset") -> dict[str, dict]:  # fmt: skip
    """The predictions by id, read line by line (each line at most `files.MAX_LINE_BYTES`). With `task`, every
    record is checked as scoring reads it (`files.check_prediction`), and with `ids` its id must be one of them. A
    last line without its newline that is not JSON (a write cut short) is left out, and with `repair` cut from the
    file (a whole one gets its newline); a malformed complete line or an id twice is an error naming the line."""
    from eval.files import MAX_LINE_BYTES, EvalFileError, check_prediction, numbered_lines, parse_json_line, shown

    out: dict[str, dict] = {}
    if not path.exists():
        return out
    first: dict[str, int] = {}
    torn = whole_unended = None
    for number, text, ended in numbered_lines(path, "predictions file"):
        if not text.strip():
            continue
        if ended:
            record = parse_json_line(path, number, text)
        else:
            try:
                record = json.loads(text)
            except (ValueError, RecursionError):
                torn = number
                break
            whole_unended = number
        sample = check_prediction(record, path, number, task, labels, ids, ids_from)
        if sample in out:
            raise EvalFileError(path, number, "id", f"{shown(sample)} appears twice (first at line {first[sample]})")
        out[sample], first[sample] = record, number
    if torn is not None and not repair:
        print(f"warning: {path}:{torn}: an unfinished last line (a write cut short) is left out", file=sys.stderr)
    if repair and (torn is not None or whole_unended is not None):
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if torn is not None:  # cut back to the end of the last whole line; the sample is answered again
                f.seek(max(0, size - MAX_LINE_BYTES - 1))
                tail = f.read()
                f.truncate(size - len(tail) + tail.rfind(b"\n") + 1)
            else:
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
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
    from eval.files import whole_number

    if not text:
        return 1, 1
    part, sep, total = text.partition("/")
    if not sep or not whole_number(part) or not whole_number(total) or not 1 <= int(part) <= int(total):
        raise ValueError(f"--shard {text!r}: expected I/N with 1 <= I <= N, for example 2/4")
    return int(part), int(total)


def run_settings(args) -> dict:
    from mllm.checkpoints import resolve_checkpoint

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
    """The settings of an `eval run` (or `eval merge`) folder, each checked (`files.read_run_settings`), or a
    one-line error when it is not one."""
    from eval.files import read_run_settings

    path = Path(folder) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: not an `eval run` folder (no {RUN_FILE})")
    return read_run_settings(path)


def check_same_run(out: Path, settings: dict) -> None:
    """A folder holding another run's predictions is refused, naming the first setting that differs."""
    from mllm.outputs import atomic_write_text

    path = out / RUN_FILE
    if path.exists() or path.is_symlink():
        from eval.files import read_settings_object

        before, _ = read_settings_object(path)  # what differs is named below, whatever else is wrong with it
        for key, value in settings.items():
            if before.get(key) != value:
                raise ValueError(
                    f"{out}: holds a run with {key}={before.get(key)!r}, not {value!r}; choose a new --out"
                )
    elif (out / PREDICTIONS).exists():
        raise ValueError(f"{out}: has {PREDICTIONS} but no {RUN_FILE}; choose a new --out")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def rows_and_predictions(folder, settings: dict, what: str = "score", loaded=None):
    """A run's dataset rows, label space and checked predictions (every id one of the rows'); a run without any
    prediction is refused: there is nothing to `what`. `loaded`: the (rows, label space) of the same settings."""
    from data_builders.read import dataset_label_space, load_split
    from mllm.labels import label_space

    rows, space = loaded or (
        load_split(settings["data"], settings["split"], [settings["task"]], settings.get("max_samples"), seed=0),
        dataset_label_space(Path(settings["data"])),
    )
    path = Path(folder) / PREDICTIONS
    where = f"{settings['data']} [{settings['split']}] task {settings['task']}"
    predictions = read_predictions(path, task=settings["task"], labels=label_space(space), ids=set(rows["id"]),
                                   ids_from=where)  # fmt: skip
    if not predictions:
        missing = "missing" if not path.exists() else "holds no prediction"
        raise ValueError(f"{path}: {missing}, for the {len(rows)} samples of {where}; nothing to {what}")
    return rows, space, predictions


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
    from data_builders.read import conversation
    from serve.engine import RequestError

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

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(rows))))))
    if unreadable:
        from serve.analyze import printable

        sample, message = unreadable[0]
        message = printable(message)  # the media error may quote file names: shown escaped, like a model's text
        print(f"warning: {len(unreadable)} samples could not be read and count as wrong answers (their lines say "
              f"why; remove them from {PREDICTIONS} to retry); first: {sample}: {message}",
              file=sys.stderr)  # fmt: skip
    return done


def _check_label_space(args) -> None:
    """An expression model answers in its own label space; scoring it against another dataset's is refused."""
    from data_builders.read import dataset_label_space
    from mllm.checkpoints import resolve_checkpoint

    if args.task != "expr":
        return
    config = Path(str(resolve_checkpoint(args.model))) / "config.json"
    if args.adapter and (Path(args.adapter) / "config.json").is_file():  # a trained folder answers in its own space
        config = Path(args.adapter) / "config.json"
    try:
        model_space = json.loads(config.read_text(encoding="utf-8")).get("label_space")
    except (ValueError, AttributeError):
        raise ValueError(f"{config}: not a JSON object of the model's settings") from None
    data_space = dataset_label_space(Path(args.data))
    if model_space != data_space:
        raise ValueError(f"{config}: the model answers in label space {model_space!r}, the dataset {args.data} is "
                         f"labelled in {data_space!r}; evaluate a model trained on this label space")  # fmt: skip


COUNTS = {"max_samples": "--max-samples", "max_new_tokens": "--max-new-tokens", "concurrency": "--concurrency",
          "max_model_len": "--max-model-len"}  # fmt: skip


def check_counts(args) -> None:
    """Counts are whole numbers of at least 1, checked before anything is read or started (a subset of -3 samples
    used to select nothing and score "0/0")."""
    for name, option in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"{option}: must be at least 1, got {value}")
    if args.max_new_tokens >= args.max_model_len:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: leaves no room for the prompt in --max-model-len "
                         f"{args.max_model_len}")  # fmt: skip
    parse_shard(args.shard)
    if args.adapter and not Path(args.adapter).is_dir():
        raise FileNotFoundError(f"--adapter {args.adapter}: no such folder")


def run(args) -> int:
    from data_builders.read import dataset_label_space, load_split
    from eval.files import dataset_splits
    from mllm.labels import label_space
    from mllm.output import think_budget
    from mllm.outputs import claim_output_dir

    check_counts(args)
    dataset_splits(args.data)
    settings = run_settings(args)
    space = dataset_label_space(Path(args.data))
    try:
        think_budget(args.task, space, args.max_new_tokens)  # room for the answer
    except ValueError as exc:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: {exc}") from None
    rows = load_split(args.data, args.split, [args.task], args.max_samples, seed=0)  # checked before any writing
    part, total = parse_shard(args.shard)
    if part > len(rows):
        raise ValueError(f"--shard {args.shard}: shard {part} of {args.data} [{args.split}] task {args.task} has no "
                         f"sample (there are {len(rows)}); use at most {len(rows)} shards")  # fmt: skip
    _check_label_space(args)
    ids = list(rows["id"])
    by_id = sorted(range(len(ids)), key=ids.__getitem__)  # not Dataset.sort, whose pyarrow warns on stderr
    rows = rows.select(by_id[part - 1 :: total])
    protect = [p for p in (args.data, args.model, args.adapter, *inputs_of(args)) if p and Path(p).exists()]
    out = claim_output_dir(args.out, protect=protect, what="--out", kind="eval-run")
    check_same_run(out, settings)
    answers = out / PREDICTIONS
    if answers.is_symlink() or (answers.exists() and answers.stat().st_nlink > 1):
        raise ValueError(f"{answers}: a link to another file; answers are appended here, never to another file")
    where = f"{args.data} [{args.split}] task {args.task} shard {part}/{total}"
    done = read_predictions(out / PREDICTIONS, repair=True, task=args.task, labels=label_space(space),
                            ids=set(rows["id"]), ids_from=where)  # fmt: skip
    todo = rows.filter(lambda sample: sample not in done, input_columns="id") if done else rows
    print(f"{len(rows)} samples in {args.data} [{args.split}] task {args.task}, shard {part}/{total}: "
          f"{len(done)} answered before, {len(todo)} to go", file=sys.stderr, flush=True)  # fmt: skip
    if len(todo):
        _answer(args, todo)
    return 0


def inputs_of(args) -> list[str]:
    """The challenge-file inputs named on the command line (a sample file, an annotation folder, a split file)."""
    return [p for p in (getattr(args, k, None) for k in ("sample", "frames_from", "reference")) if p]


def _answer(args, todo) -> None:
    from tqdm import tqdm

    from mllm.predict import stdout_to_stderr
    from serve.engine import Engine, parallel_arguments
    from serve.startup import StartupLog

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    out = Path(args.out)
    adapters = {"adapter": args.adapter} if args.adapter else None
    # One status line per start-up phase; vLLM's output in a log file unless --verbose (serve.startup).
    log = StartupLog("eval run", verbose=args.verbose or getattr(args, "verbose_top", False)).start()
    with stdout_to_stderr():
        engine = Engine(args.model, adapters, dtype=args.dtype, enforce_eager=args.enforce_eager or None,
                        max_model_len=args.max_model_len, status=log.phase, **parallel_arguments(args))  # fmt: skip
    appender = Appender(out / PREDICTIONS)

    async def main():
        await engine.start()
        log.phase(f"answering {len(todo)} samples")
        progress = tqdm(total=len(todo), unit="sample", desc="eval", file=sys.stderr, smoothing=0.1)
        try:
            await answer_rows(engine, todo, args.task, "adapter" if args.adapter else None, args.max_new_tokens,
                              appender, args.concurrency, progress)  # fmt: skip
        finally:
            progress.close()
            await engine.shutdown()

    try:
        with stdout_to_stderr():  # vLLM's processes inherit the descriptor: stdout stays for the scores
            asyncio.run(main())
    finally:
        appender.close()


def add_arguments(parser) -> None:
    from mllm.output import TASKS

    parser.add_argument("--data", required=True, metavar="DIR", help="a folder written by `emoreason data build`")
    parser.add_argument("--model", required=True, help="EmoReason model folder (training's output) or hub id")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="answer with this trained folder or adapter")
    parser.add_argument("--split", default="validation", help="the dataset split to answer")
    parser.add_argument("--task", default="expr", choices=TASKS,
                        help="expression, action units, valence/arousal or ambivalence/hesitancy")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="new or empty, or an earlier run's to resume")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="answer only the I-th of N disjoint parts (default: all of the split)")  # fmt: skip
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="a random subset of this size, seed 0 (default: every sample)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                        help="tokens per answer; the reasoning gets what the answer leaves")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=64, metavar="N", help="requests in flight")
    parser.add_argument("--dtype", default=None, help="vLLM dtype (default: as `serve`)")
    parser.add_argument("--enforce-eager", action="store_true", help="no compiled graphs (fast start)")
    parser.add_argument("--max-model-len", type=int, default=4096, metavar="N",
                        help="vLLM's context length in tokens, prompt and answer together")  # fmt: skip
    from serve.engine import add_parallel_arguments

    add_parallel_arguments(parser)
