"""Serving benchmark: throughput and latency at 1, 4, 16 and 64 concurrent clients for (a) our endpoint
(`emoreason serve`: the encoders batched in the server, vLLM fed `prompt_embeds`), (b) a one-request-at-a-time
transformers server (processor + `generate` per request, requests queued first come first served) and (c)
statically batched transformers `generate` (the processor and `generate` over as many requests as there are clients
at once), on the same random checkpoint and the same requests, in one run; and (d), the ceiling: vLLM alone (the
engine's own AsyncLLM, in this process, without HTTP), fed the embeddings of the same requests computed beforehand
(no decoding, tracking or encoders in the timed part), the same lengths and the same clients. (a)/(d) is what our
engine costs over the bare language model.

    .venv/bin/python bench/serve.py [--size mid] [--levels 1 4 16 64] [--max-tokens 32] [--systems a b c d]

The default takes about 15 minutes on 2 cores. Requests cost what real ones cost: each is a different camera-like
clip (640x360 h264, 2 s at 25 fps, a real face photograph moving over a noisy background, `write_camera_video`),
decoded, its face tracked with 68 landmarks on 8 frames and encoded by the vision tower, face attention and audio
branch, then asked the expression question; every system does all of that per request (the face cache starts
empty for each system, and no clip is asked twice within a system). Every completion is exactly `--max-tokens`
tokens (vLLM `min_tokens`, transformers `min_new_tokens`), so the systems do the same work.

Each level runs `max(clients, 4)` requests from `clients` closed-loop clients (each sends its next request when its
last one is answered). Latency is from a request's sending to its last token; time to first token (TTFT) to its
first token (for (c), the first token of its batch); throughput is requests per second of wall time over the level.
(a) is measured through HTTP with the official `openai` client, streaming; (b) and (c) in this process, without
HTTP. The checkpoint is `make_tiny(size=...)` ("mid": widths of a ~0.5B language model, fewer layers). (a) runs the
engine's CPU default (compiled graphs; bf16 where the CPU has native bf16, else fp32: `serve.engine.cpu_dtype`);
`--systems a16` adds the endpoint with bf16 forced, to see what bf16 costs on this CPU. (b) and (c) run what
transformers users run by default (fp32).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = {
    "a": "(a) our endpoint (vLLM)",
    "a16": "(a) our endpoint, bf16 forced",
    "b": "(b) transformers, one at a time",
    "c": "(c) transformers, static batches",
    "d": "(d) vLLM alone, embeddings precomputed",
}


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def make_inputs(work: Path, size: str, levels: list[int], clip_seconds: float) -> tuple[Path, dict[int, list[Path]]]:
    """The checkpoint, and each level's own clips (different seeds: different motion, noise and answers)."""
    from mllm.samples import synthetic
    from mllm.samples.tiny import make_tiny

    model = make_tiny(work / "model", size=size)
    clips, seed = {}, 0
    (work / "clips").mkdir(exist_ok=True)
    for level in levels:
        clips[level] = []
        for _ in range(max(level, 4)):
            path = work / "clips" / f"clip{seed:03d}.mp4"
            if not path.exists():
                synthetic.write_camera_video(path, round(clip_seconds * 25), fps=25.0, seed=seed)
            clips[level].append(path)
            seed += 1
    return model, clips


def _messages(clip: Path, label_space: str) -> list[dict]:
    from mllm.predict import build_messages

    return build_messages(clip, "expr", label_space)


# ---------------------------------------------------------------------------------------------------------------
# The closed-loop clients


async def run_level(ask, requests: list, clients: int) -> dict:
    """`ask(request) -> (ttft_s_from_send, latency_s)`; `clients` closed-loop clients share `requests`."""
    queue = list(requests)
    ttfts, latencies = [], []

    async def client():
        while queue:
            item = queue.pop(0)
            ttft, latency = await ask(item)
            ttfts.append(ttft)
            latencies.append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {"wall": wall, "ttft": ttfts, "latency": latencies, "n": len(requests)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------------------------------------------
# (a) our endpoint


def start_server(model: Path, clips: Path, port: int, log: Path, cache: Path, dtype: str | None) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "EMOREASON_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mllm.cli", "serve", "--model", str(model), "--port", str(port),
           "--allow-media-dir", str(clips), "--max-model-len", "4096", "--max-tokens", "4096",
           *(["--dtype", dtype] if dtype else [])]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.kill()
    raise RuntimeError("the server did not start in 900 s")


def endpoint_asker(port: int, label_space: str, max_tokens: int):
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)

    async def ask(clip: Path):
        messages = _messages(clip, label_space)
        messages[0]["content"][0] = {"type": "video_url", "video_url": {"url": f"file://{clip}"}}
        sent = time.perf_counter()
        first, tokens = None, 0
        stream = await client.chat.completions.create(
            model="emoreason", messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
            extra_body={"min_tokens": max_tokens}, stream_options={"include_usage": True},
        )  # fmt: skip
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        done = time.perf_counter()
        if tokens != max_tokens:
            raise RuntimeError(f"the endpoint returned {tokens} tokens, not {max_tokens}")
        return (first or done) - sent, done - sent

    return ask


# ---------------------------------------------------------------------------------------------------------------
# (b) and (c): transformers in this process


class _FirstToken:
    """A `generate` streamer that notes when the first new token arrives (its first `put` is the prompt)."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, _value):
        self.calls += 1
        if self.calls == 2 and self.at is None:
            self.at = time.perf_counter()

    def end(self):
        pass


def load_transformers(model_dir: Path):
    import torch

    from mllm.export import load_model
    from mllm.processor import EmoReasonProcessor

    model = load_model(model_dir, dtype=torch.float32, adapter="merge").eval()
    return model, EmoReasonProcessor.from_pretrained(model_dir)


def generate_batch(model, processor, clips: list[Path], max_tokens: int) -> float:
    """Processor + greedy `generate` over `clips` at once; returns the first token's time (perf_counter)."""
    import torch

    streamer = _FirstToken()
    with torch.no_grad():
        batch = processor([_messages(c, model.config.label_space) for c in clips])
        out = model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                             streamer=streamer)  # fmt: skip
    if out.shape[1] != max_tokens:
        raise RuntimeError(f"generate returned {out.shape[1]} tokens, not {max_tokens}")
    return streamer.at


def one_at_a_time_asker(model, processor, max_tokens: int):
    lock = asyncio.Lock()  # first come, first served: asyncio's lock wakes waiters in order

    async def ask(clip: Path):
        sent = time.perf_counter()
        async with lock:
            first = await asyncio.to_thread(generate_batch, model, processor, [clip], max_tokens)
        done = time.perf_counter()
        return first - sent, done - sent

    return ask


def static_batch_asker(model, processor, max_tokens: int, batch_size: int, total: int):
    """Requests are collected until `batch_size` wait (or no more will come), then answered together."""
    state = {"pending": [], "left": total, "lock": asyncio.Lock()}

    async def ask(clip: Path):
        sent = time.perf_counter()
        future = asyncio.get_running_loop().create_future()
        state["pending"].append((clip, future))
        state["left"] -= 1
        if len(state["pending"]) >= batch_size or state["left"] == 0:
            batch, state["pending"] = state["pending"], []
            async with state["lock"]:
                first = await asyncio.to_thread(generate_batch, model, processor, [c for c, _ in batch], max_tokens)
            done = time.perf_counter()
            for _, f in batch:
                f.set_result((first, done))
        first, done = await future
        return first - sent, done - sent

    return ask


# ---------------------------------------------------------------------------------------------------------------
# The run


# ---------------------------------------------------------------------------------------------------------------
# (d): vLLM alone, fed embeddings computed before the clock starts


async def bare_vllm_levels(model_dir: Path, clips: dict[int, list[Path]], levels: list[int], max_tokens: int,
                           report) -> None:  # fmt: skip
    """The engine's vLLM (the endpoint's defaults: compiled graphs, its dtype) asked with each request's prompt
    embeddings, computed by our processor and encoders before timing; only vLLM's generation is timed."""
    import json

    from mllm.samples import synthetic
    from serve.engine import Engine

    engine = Engine(model_dir, max_num_seqs=64)
    await engine.start()
    try:
        label_space = json.loads((model_dir / "config.json").read_text())["label_space"]

        ready = {}
        warm = synthetic.write_camera_video(clips[levels[0]][0].parent / "warm-d.mp4", 25, fps=25.0, seed=998)
        for clip in [warm, *(c for level in levels for c in clips[level])]:
            ready[clip] = await engine.embed(_messages(clip, label_space))

        async def ask(clip: Path):
            params = engine.sampling_params(None, max_tokens, min_tokens=max_tokens)
            sent, first, tokens = time.perf_counter(), None, 0
            async for delta in engine.stream([], params=params, embeds=ready[clip]):
                if delta.token_ids and first is None:
                    first = time.perf_counter()
                tokens += len(delta.token_ids)
            done = time.perf_counter()
            if tokens != max_tokens:
                raise RuntimeError(f"vLLM returned {tokens} tokens, not {max_tokens}")
            return (first or done) - sent, done - sent

        await run_level(ask, [warm], 1)  # warm-up, not timed
        for level in levels:
            report("d", level, await run_level(ask, clips[level], level))
    finally:
        await engine.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "mid"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--systems", nargs="+", default=["a", "b", "c", "d"], choices=list(SYSTEMS))
    parser.add_argument("--work", default=None, help="folder for the checkpoint and clips (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"preparing the {args.size} checkpoint and {sum(max(c, 4) for c in args.levels)} clips in {work}",
          file=sys.stderr, flush=True)  # fmt: skip
    model_dir, clips = make_inputs(work, args.size, args.levels, args.clip_seconds)
    results: dict[tuple[str, int], dict] = {}

    def report(system: str, level: int, r: dict) -> None:
        results[(system, level)] = r
        print(f"{SYSTEMS[system]} at {level} clients: {r['n'] / r['wall']:.2f} req/s, "
              f"p50 {_pct(r['latency'], 50):.2f} s", file=sys.stderr, flush=True)  # fmt: skip

    for system in ("a", "a16"):
        if system not in args.systems:
            continue
        port = _free_port()
        server = start_server(model_dir, work / "clips", port, work / f"server-{system}.log", Path(tempfile.mkdtemp()),
                              "bfloat16" if system == "a16" else None)  # fmt: skip
        try:
            import json

            from mllm.samples import synthetic

            label_space = json.loads((model_dir / "config.json").read_text())["label_space"]
            warm = synthetic.write_camera_video(work / "clips" / "warm.mp4", 25, fps=25.0, seed=999)

            async def endpoint_levels(system=system, port=port, label_space=label_space, warm=warm):
                ask = endpoint_asker(port, label_space, args.max_tokens)  # one event loop for its connections
                await run_level(ask, [warm], 1)  # one request first: warm-up is not timed
                for level in args.levels:
                    report(system, level, await run_level(ask, clips[level], level))

            asyncio.run(endpoint_levels())
        finally:
            server.terminate()
            server.wait(timeout=60)

    if {"b", "c"} & set(args.systems):
        model, processor = load_transformers(model_dir)
        for system in ("b", "c"):
            if system not in args.systems:
                continue
            os.environ["EMOREASON_CACHE"] = tempfile.mkdtemp()  # an empty face cache for each system
            generate_batch(model, processor, [clips[args.levels[0]][0]], 2)  # warm-up, not timed
            os.environ["EMOREASON_CACHE"] = tempfile.mkdtemp()
            for level in args.levels:
                total = len(clips[level])
                ask = (one_at_a_time_asker(model, processor, args.max_tokens) if system == "b"
                       else static_batch_asker(model, processor, args.max_tokens, level, total))  # fmt: skip
                report(system, level, asyncio.run(run_level(ask, clips[level], level)))

    if "d" in args.systems:
        os.environ["EMOREASON_CACHE"] = tempfile.mkdtemp()
        asyncio.run(bare_vllm_levels(model_dir, clips, args.levels, args.max_tokens, report))

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
    from serve.engine import cpu_dtype

    print(f"\nmachine: {cpu}, {os.cpu_count()} cores; checkpoint: {args.size}; {args.max_tokens} tokens per answer; "
          f"endpoint dtype {cpu_dtype()}\n")  # fmt: skip
    print("| clients | system | req/s | tokens/s | p50 latency s | p99 latency s | p50 TTFT s | (a) speed-up |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for level in args.levels:
        base = results.get(("a", level))
        for system in args.systems:
            r = results[(system, level)]
            rps = r["n"] / r["wall"]
            speedup = "" if base is None or system.startswith("a") else f"{(base['n'] / base['wall']) / rps:.2f}x"
            ttft = statistics.median(r["ttft"])
            p50, p99 = _pct(r["latency"], 50), _pct(r["latency"], 99)
            print(f"| {level} | {SYSTEMS[system]} | {rps:.2f} | {rps * args.max_tokens:.1f} | {p50:.2f} | {p99:.2f} | "
                  f"{ttft:.2f} | {speedup} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
