"""Live-analysis benchmark: streams at once against sustained answers a second, latency p50/p95 and skipped windows,
for (a) our live session (`serve/live.py`: frames tracked one by one as they arrive, the window's frames and
landmarks sent to the engine every hop) and (b) what users do today: every hop, the last window recorded as a clip
(h264 + AAC in memory) and sent as a video request, decoded and its face detected afresh (`emoreason analyze` on a
recording), through the same engine, in one run.

    .venv/bin/python bench/live.py [--sizes tiny mid] [--streams 1 2 4] [--seconds 12] [--systems a b]

Each stream is a camera-like clip (640x360 h264 at 25 fps, a real face photograph moving over a noisy background,
`write_camera_video`, with speech from espeak-ng), played in real time from its own thread at `--fps` frames a second
(default 5) for `--seconds`; window 2 s, hop 1 s, the expression question, answers of at most `--max-tokens` tokens,
constrained. A window whose hop comes while the stream's last answer is still out is skipped (both systems), so
"answers / s" per stream is what a stream sustains (1.0 is every hop) and latency is from the window's last frame
to its answer. The engine runs vLLM without compiled graphs in fp32 (the tests' settings); "mid" is
`make_tiny(size="mid")` (widths of a ~0.5B language model, fewer layers). The first 2 s of each level (the first
window) are included.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _frames_of(path: Path, fps: float):
    """(t, rgb) at `fps` a second (the camera clip has no audio track: speech is added beside it)."""
    from mllm.media import load_video

    clip = load_video(str(path))
    keep, next_t = [], 0.0
    for t, rgb in zip(clip.timestamps_s, clip.frames, strict=True):
        if t + 1e-6 >= next_t:
            keep.append((float(t), rgb))
            next_t = t + 1.0 / fps
    return keep


class ClipSession:
    """(b): every hop, the last window recorded as an mp4 in memory and asked about as a video request."""

    def __init__(self, engine, window_s: float, hop_s: float, max_tokens: int, fps: float):
        from serve.live import LiveStats

        self.engine, self.window_s, self.hop_s, self.max_tokens, self.fps = engine, window_s, hop_s, max_tokens, fps
        self.frames, self.audio, self.lock = [], [], threading.Lock()
        self.next_end, self.busy, self.stats = None, None, LiveStats()

    def add_frame(self, t, rgb):
        with self.lock:
            self.frames.append((t, rgb, time.monotonic()))
            self.frames = [f for f in self.frames if f[0] >= t - self.window_s - 1e-9]

    def add_audio(self, t, samples):
        with self.lock:
            self.audio.append((t, samples))
            self.audio = [a for a in self.audio if a[0] >= t - self.window_s - 1.0]

    def _record(self, end):
        import base64

        import numpy as np

        from mllm.samples import synthetic

        with self.lock:
            frames = [f for f in self.frames if end - self.window_s - 1e-9 <= f[0] <= end]
            audio = [a for a in self.audio if end - self.window_s - 1e-9 <= a[0] < end]
        with tempfile.TemporaryDirectory() as tmp:
            pcm = np.concatenate([a[1] for a in audio]) if audio else None
            path = synthetic.write_video(
                Path(tmp) / "w.mp4", np.stack([f[1] for f in frames]), fps=self.fps, audio=pcm
            )
            data = path.read_bytes()
        return "data:video/mp4;base64," + base64.b64encode(data).decode(), max(f[2] for f in frames)

    async def tick(self, t):
        if self.next_end is None:
            self.next_end = self.frames[0][0] + self.window_s
        while t + 1e-9 >= self.next_end:
            end, self.next_end = self.next_end, self.next_end + self.hop_s
            if self.busy is not None and not self.busy.done():
                self.stats.skipped += 1
                continue
            self.busy = asyncio.create_task(self._answer(end))

    async def _answer(self, end):
        url, arrived = await asyncio.to_thread(self._record, end)
        question = {"type": "text", "text": "Which facial expression does the person show?"}
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, question]}]
        params = self.engine.sampling_params("expr", max_tokens=self.max_tokens)
        await self.engine.complete(messages, task="expr", params=params)
        self.stats.answered += 1
        self.stats.latencies_s.append(time.monotonic() - arrived)

    async def drain(self):
        if self.busy is not None:
            await asyncio.gather(self.busy, return_exceptions=True)


async def run_level(engine, system: str, clips, streams: int, seconds: float, fps: float, max_tokens: int) -> dict:
    from serve.live import LiveSession

    loop = asyncio.get_running_loop()
    sessions = []
    for _ in range(streams):
        if system == "a":
            sessions.append(LiveSession(engine, window_s=2.0, hop_s=1.0, max_tokens=max_tokens))
        else:
            sessions.append(ClipSession(engine, 2.0, 1.0, max_tokens, fps))
    started = time.monotonic()

    def play(session, frames, audio):
        chunk = int(16000 / fps)
        for i, (t, rgb) in enumerate(frames):
            if t > seconds:
                break
            delay = started + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            session.add_audio(t, audio[i * chunk : (i + 1) * chunk])
            session.add_frame(t, rgb)
            asyncio.run_coroutine_threadsafe(session.tick(t), loop)

    threads = [threading.Thread(target=play, args=(s, *clips[i % len(clips)]), daemon=True)
               for i, s in enumerate(sessions)]  # fmt: skip
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        await asyncio.sleep(0.1)
    for s in sessions:
        await s.drain()
    answered = sum(s.stats.answered for s in sessions)
    skipped = sum(s.stats.skipped for s in sessions)
    latencies = sorted(x for s in sessions for x in s.stats.latencies_s)
    windows = max(1, int(seconds - 2.0) + 1)
    return {
        "answers_per_s_per_stream": answered / streams / max(seconds - 1.0, 1.0),
        "answered_share": answered / (windows * streams),
        "skipped": skipped,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan"),
    }


async def bench_size(size: str, args, tmp: Path) -> list[tuple]:
    from mllm.samples import synthetic
    from mllm.samples.tiny import make_tiny
    from serve.engine import Engine

    model = make_tiny(tmp / size, size=size)
    speech = synthetic.speech_or_tone("I am not sure how I feel about this, it could go either way I suppose.", 6.0)
    clips = []
    for seed in range(2):
        video = synthetic.write_camera_video(tmp / f"cam{seed}.mp4", int(25 * (args.seconds + 1)), seed=seed)
        frames = _frames_of(video, args.fps)
        audio = __import__("numpy").tile(speech, int(args.seconds / 6) + 2)
        clips.append((frames, audio))
    engine = Engine(model, dtype="float32", enforce_eager=True, max_model_len=2048)
    await engine.start()
    rows = []
    try:
        for system in args.systems:
            for streams in args.streams:
                print(f"{size}: system {system}, {streams} stream(s) ...", flush=True)
                r = await run_level(engine, system, clips, streams, args.seconds, args.fps, args.max_tokens)
                rows.append((size, system, streams, r))
    finally:
        await engine.shutdown()
    return rows


SYSTEMS = {"a": "live session (tracked, serve/live.py)", "b": "a recorded clip a window (users today)"}


def main(argv=None) -> int:
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "mid"])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--systems", nargs="+", default=["a", "b"], choices=list(SYSTEMS))
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows += asyncio.run(bench_size(size, args, Path(tmp)))
    out = io.StringIO()
    print(f"\n### Live: window 2 s, hop 1 s, {args.fps:g} frames a second, {args.seconds:g} s per level, "
          f"answers of at most {args.max_tokens} tokens\n", file=out)  # fmt: skip
    print("| size | system | streams | answers / s per stream | windows answered | skipped | p50 latency s "
          "| p95 latency s |", file=out)  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|", file=out)
    for size, system, streams, r in rows:
        print(f"| {size} | {SYSTEMS[system]} | {streams} | {r['answers_per_s_per_stream']:.2f} "
              f"| {r['answered_share']:.0%} | {r['skipped']} | {r['p50']:.2f} | {r['p95']:.2f} |",
              file=out)  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    print(f"\nMachine: {cpu}, {os.cpu_count()} cores. Whole run {time.monotonic() - started:.0f} s.", file=out)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
