"""`emoreason data faces DATA --model DIR [--workers N] [--shard I/N]`: fill the face cache for every sample of a
built dataset ahead of training or evaluation, in N processes.

Each sample's prompt is rendered by the model's own processor, exactly as the trainer's collator and `eval run`
render it, so the face tracks land under the keys those will look up (the same frames, windows and tracker
settings); the first training epoch then decodes, but never detects or tracks. A separate step rather than a part
of `data build`: the cache keys depend on the processor (frames per clip, detector), which a dataset does not fix,
and the step is the one worth spreading over cores and machines (`--shard I/N` runs the I-th of N parts, 0-based,
as a Slurm array task would; every part writes into the same cache, which may be a shared folder).

Resumable: finished samples are appended to a ledger in the cache (`faces/prepared/KEY.done`, KEY from the
dataset, the processor's face settings and the shard); a killed run skips them when started again and redoes only
what it had not finished. A sample whose media cannot be read is reported in one line (the sample id and the
reason); the others go on, and the command exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

CHUNK = 4  # samples a worker takes at a time
_processor = None  # the worker's own
_LOADS = {"fork": "models loaded once, shared", "spawn": "each loads the models"}  # how workers start, said once


def add_arguments(sub) -> None:
    faces = sub.add_parser("faces", help="fill the face cache for a built dataset, in parallel, resumable",
                           description=__doc__)  # fmt: skip
    faces.add_argument("data", help="a dataset folder written by `emoreason data build`")
    what = "the EmoReason model folder whose processor will read the data (make-tiny's, or a run's)"
    faces.add_argument("--model", required=True, help=what)
    faces.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    faces.add_argument("--shard", default="0/1", metavar="I/N", help="do the I-th of N parts (0-based; default 0/1)")
    faces.add_argument("--split", action="append", help="repeatable; default every split")


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard: give I/N with 0 <= I < N (0-based, e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard: give I/N with 0 <= I < N (0-based, e.g. 0/4), got {text!r}")
    return index, count


def _face_settings(processor) -> dict:
    return {
        "tracker": processor.tracker_settings().to_dict(),
        "detector": processor.face_detector,
        "frames_per_clip": processor.frames_per_clip,
        "max_audio_seconds": processor.max_audio_seconds,
    }


def ledger_path(data: Path, processor, shard: tuple[int, int], splits: list[str]) -> Path:
    from mllm.face.pipeline import default_cache_dir

    report = data / "build_report.json"
    built = hashlib.sha256(report.read_bytes()).hexdigest() if report.is_file() else ""
    payload = json.dumps({"data": str(data.resolve()), "built": built, "faces": _face_settings(processor),
                          "shard": shard, "splits": splits}, sort_keys=True, default=str)  # fmt: skip
    return default_cache_dir() / "prepared" / f"{hashlib.sha256(payload.encode()).hexdigest()}.done"


def _init(model: str | None, workers: int = 1) -> None:
    """A worker's start. Forked (Linux): the processor and dlib's models came loaded from the parent, so a worker
    starts in milliseconds and the models are read once for all of them. Spawned: each loads its own."""
    import torch

    import mllm.media
    from mllm.face import FaceCache
    from mllm.face.landmarks import _dlib_models
    from mllm.processor import EmoReasonProcessor

    global _processor
    torch.set_num_threads(1)  # one core a worker: the workers are the parallelism
    # FFmpeg's own decoding threads (one per core) would fight the other workers for the cores.
    mllm.media.DECODE_THREADS = max(1, (os.cpu_count() or 1) // workers)
    if model is not None:
        _processor = EmoReasonProcessor.from_pretrained(model)
        _processor.face_cache = FaceCache()
    _dlib_models()


def _start_method() -> str:
    """fork where the platform has it and this process runs no other Python thread (a fork copies only the
    calling thread: a lock held by another would stay held in the child); spawn otherwise."""
    import multiprocessing
    import threading

    forkable = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    return "fork" if forkable else "spawn"


def _work(samples: list[tuple[str, str]]) -> list[tuple[str, int, str | None, int, int]]:
    """(id, frames rendered, problem or None, cache hits, misses) per sample."""
    out = []
    for sample, prompt in samples:
        cache = _processor.face_cache
        hits, misses = cache.hits, cache.misses
        try:
            batch = _processor([json.loads(prompt)])
            frames, problem = int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0, None
        except Exception as exc:  # noqa: BLE001 - one sample's bad media is reported, the others go on
            frames, problem = 0, f"{type(exc).__name__}: {exc}".splitlines()[0]
        out.append((sample, frames, problem, cache.hits - hits, cache.misses - misses))
    return out


def run(args) -> int:
    from mllm.processor import EmoReasonProcessor

    data = Path(args.data)
    if not (data / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{data}: not a dataset folder (write one with `emoreason data build`)")
    if not (isinstance(args.workers, int) and 1 <= args.workers <= 256):
        raise ValueError(f"--workers: between 1 and 256, got {args.workers}")
    shard = parse_shard(args.shard)
    processor = EmoReasonProcessor.from_pretrained(args.model)  # refused here, in one line, before any work
    method = _start_method()  # before anything else here starts threads
    pool = _pool(args, processor, method)
    try:
        return _prepare(args, data, shard, processor, pool, method)
    finally:
        pool.shutdown(cancel_futures=True)


def _pool(args, processor, method: str) -> ProcessPoolExecutor:
    import multiprocessing

    from mllm.face import FaceCache

    global _processor
    if method == "fork":
        _processor = processor
        _processor.face_cache = FaceCache()
        _init(None, args.workers)  # dlib's models, loaded here once and shared by every worker
    pool = ProcessPoolExecutor(args.workers, multiprocessing.get_context(method), _init,
                               (None if method == "fork" else args.model, args.workers))  # fmt: skip
    pool.submit(int).result()  # every worker starts now (a fork pool starts them all at the first task)
    return pool


def _prepare(args, data: Path, shard: tuple[int, int], processor, pool: ProcessPoolExecutor, method: str) -> int:
    from datasets import load_from_disk
    from tqdm import tqdm

    splits = load_from_disk(str(data))
    chosen = args.split or sorted(splits)
    for name in chosen:
        if name not in splits:
            raise ValueError(f"{data}: no split {name!r}; it has {', '.join(sorted(splits))}")
    samples = []
    for name in chosen:
        for sample, prompt in zip(splits[name]["id"], splits[name]["prompt"], strict=True):
            samples.append((sample, prompt))
    samples = samples[shard[0] :: shard[1]]
    ledger = ledger_path(data, processor, shard, chosen)
    done = set(ledger.read_text().split("\n")) if ledger.is_file() else set()
    todo = [s for s in samples if s[0] not in done]
    print(f"{data}: {len(samples)} samples in shard {shard[0]}/{shard[1]}, {len(samples) - len(todo)} done before; "
          f"{len(todo)} to go on {args.workers} workers ({method}: {_LOADS[method]})", file=sys.stderr)  # fmt: skip
    ledger.parent.mkdir(parents=True, exist_ok=True)
    problems, hits, misses, frames = [], 0, 0, 0
    started = time.monotonic()
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    expected = sum(processor.frames_per_clip if ('"video' in p or '"frames"' in p) else 1 for _, p in todo)
    bar = tqdm(total=expected, unit="frame", desc="faces", dynamic_ncols=True,
               file=sys.stderr, smoothing=0.1)  # fmt: skip
    with open(ledger, "a", encoding="utf-8") as log:
        pending, queue = set(), iter(chunks)
        while True:
            while len(pending) < 2 * args.workers and (chunk := next(queue, None)) is not None:
                pending.add(pool.submit(_work, chunk))  # a bounded number out at once: memory stays flat
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                for sample, n, problem, h, m in future.result():
                    hits, misses, frames = hits + h, misses + m, frames + n
                    if problem is not None:
                        problems.append((sample, problem))
                        bar.write(f"{data}: sample {sample!r}: {problem}", file=sys.stderr)
                        continue
                    log.write(sample + "\n")
                    bar.update(n)
                log.flush()
                os.fsync(log.fileno())
    bar.close()
    seconds = time.monotonic() - started
    rate = frames / seconds if seconds > 0 else 0.0
    print(f"faces: {len(todo) - len(problems)} samples ({frames} frames) in {seconds:.1f} s, {rate:.0f} frames/s on "
          f"{args.workers} workers; face cache {hits} hits, {misses} computed; {len(problems)} failed",
          file=sys.stderr)  # fmt: skip
    return 1 if problems else 0
