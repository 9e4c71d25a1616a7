"""`emoreason watch SOURCE`: live analysis of a camera, a network stream or a file, one answer a hop.

    emoreason watch /dev/video0 --model runs/sft/model                     # a V4L2 camera
    emoreason watch rtsp://camera.local/stream --model runs/sft/model      # a network stream the user names here
    emoreason watch clip.mp4 --model runs/sft/model --json --out watch/    # a file, played in real time

Frames are read in a worker thread (PyAV), `--fps` of them a second are tracked and kept (serve/live.py), the audio
is resampled to 16 kHz mono, and every `--hop` seconds the last `--window` seconds are asked about through the
serving engine. A file plays in real time (`--realtime`, the default) or as fast as it decodes
(`--no-realtime`). One line per answer on stdout (`--json`: one object), logs on stderr; Ctrl-C ends cleanly.
`--out DIR` appends each answer to `DIR/answers.jsonl` as it comes (each line flushed and fsynced: a killed run
keeps every answer it printed) and, at the end, writes `timeline.png` and `summary.json` (time per label, skipped
windows, latency p50/p95).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

HELP = "live analysis of a camera, a stream or a file: an answer about the last seconds every second"
CAMERA_PREFIX = "/dev/video"
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def open_source(source: str):
    """The PyAV container for a camera device, a stream URL or a file; one line naming it when it cannot open."""
    import av

    options, fmt = {}, None
    if source.startswith(CAMERA_PREFIX):
        fmt = "v4l2"
    elif source.startswith(STREAM_SCHEMES):
        options = {"rw_timeout": "10000000", "timeout": "10000000"}  # microseconds: a dead stream does not hang
    elif not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such file, camera device or stream URL")
    try:
        return av.open(source, format=fmt, options=options, timeout=10)
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"{source}: cannot be opened ({exc})") from None


class Reader(threading.Thread):
    """Decodes SOURCE, paces a file in real time, and hands frames (at most `fps` a second, at most `max_side`
    pixels on their longer side) and 16 kHz audio to the session; tells the event loop to `tick` after each frame."""

    def __init__(self, source: str, session, loop, fps: float, realtime: bool, max_side: int = 640):
        super().__init__(daemon=True, name="emoreason-watch-reader")
        self.source, self.session, self.loop = source, session, loop
        self.fps, self.realtime, self.max_side = fps, realtime, max_side
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0
        self.end_s = 0.0

    def run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # reported by the main coroutine, which ends the session
            self.error = exc
        finally:
            asyncio.run_coroutine_threadsafe(_noop(), self.loop)

    def _read(self) -> None:
        import av
        import numpy as np
        from PIL import Image

        container = open_source(self.source)
        with container:
            video = container.streams.video[0] if container.streams.video else None
            if video is None:
                raise ValueError(f"{self.source}: no video stream")
            audio = container.streams.audio[0] if container.streams.audio else None
            streams = [video] + ([audio] if audio is not None else [])
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000) if audio is not None else None
            started, origin, next_t = time.monotonic(), None, None
            for packet in container.demux(*streams):
                if self.stop.is_set():
                    return
                for frame in packet.decode():
                    if frame.time is None:
                        continue
                    origin = frame.time if origin is None else origin
                    t = float(frame.time - origin)
                    if self.realtime:
                        ahead = started + t - time.monotonic()
                        if ahead > 0:
                            time.sleep(min(ahead, 1.0))
                    if isinstance(frame, av.AudioFrame):
                        for piece in resampler.resample(frame):
                            self.session.add_audio(t, piece.to_ndarray()[0].astype(np.float32))
                        continue
                    if next_t is not None and t < next_t - 1e-6:
                        continue  # between the frames kept (--fps)
                    next_t = t + 1.0 / self.fps
                    rgb = frame.to_ndarray(format="rgb24")
                    scale = self.max_side / max(rgb.shape[:2])
                    if scale < 1:
                        size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
                        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
                    self.session.add_frame(t, rgb)
                    self.frames += 1
                    self.end_s = t
                    asyncio.run_coroutine_threadsafe(self.session.tick(t), self.loop)
            if self.frames and not self.stop.is_set():  # the last frame lasts until the next would have come
                asyncio.run_coroutine_threadsafe(self.session.tick(self.end_s + 1.0 / self.fps), self.loop)


async def _noop() -> None:  # wakes the loop when the reader ends
    return None


def answer_line(answer) -> str:
    """One answer for the terminal: its window, the answer, whether a face was seen, the latency, the reasoning."""
    from serve.analyze import printable

    if answer.error:
        what = f"error: {answer.error}"
    elif not answer.ok:
        what = "(no parseable answer)"
    else:
        what = ", ".join(f"{k} {v}" if k != "label" else str(v) for k, v in answer.fields.items())
    face = "face" if answer.face_seen else "no face"
    think = printable(answer.think or "")[:160]
    return f"{answer.start_s:6.1f}-{answer.end_s:6.1f}s  {what}  [{face}, {answer.latency_s:.2f} s]  {think}"


def summary(answers: list[dict], stats, hop_s: float) -> dict:
    """Share of answered time per label (or the task's field), windows skipped and failed, latency p50 / p95."""
    from collections import Counter

    from eval.pictures import LIVE_CLASS_FIELDS

    name = next((f for f in LIVE_CLASS_FIELDS.values() if any(f in a["fields"] for a in answers)), "label")
    labels = Counter(a["fields"][name] for a in answers if a["ok"] and name in a["fields"])
    answered = sum(labels.values())
    return {
        "answers": len(answers),
        "skipped_windows": stats.skipped,
        "failed_windows": stats.failed,
        "hop_s": hop_s,
        "time_share_per_label": {k: round(v / answered, 4) for k, v in labels.most_common()} if answered else {},
        "face_seen_share": round(sum(a["face_seen"] for a in answers) / len(answers), 4) if answers else None,
        "latency_s": {"p50": stats.latency(50), "p95": stats.latency(95)},
    }


def timeline_picture(answers: list[dict], task: str, labels: list[str], hop_s: float = 1.0):
    """The session as a timeline: each window's answer as a strip (classes), AU rows or valence/arousal curves,
    and where a face was seen."""
    from eval.pictures import live_timeline_picture

    return live_timeline_picture(answers, task, labels, hop_s=hop_s)


async def watch(args, out: Path | None) -> int:
    from mllm.labels import label_space
    from mllm.outputs import atomic_path, atomic_write_text
    from serve.engine import Engine, parallel_arguments
    from serve.live import LiveSession
    from serve.startup import StartupLog

    verbose = args.verbose or getattr(args, "verbose_top", False)
    with StartupLog("watch", verbose=verbose) as log:
        engine = Engine(args.model, dtype=args.dtype, enforce_eager=not args.compile,
                        max_model_len=args.max_model_len, status=log.phase, **parallel_arguments(args))  # fmt: skip
        await engine.start()
    session = LiveSession(engine, task=args.task, window_s=args.window, hop_s=args.hop,
                          max_tokens=args.max_new_tokens)  # fmt: skip
    loop = asyncio.get_running_loop()
    reader = Reader(args.source, session, loop, fps=args.fps, realtime=args.realtime)
    answers: list[dict] = []
    sink = open(out / "answers.jsonl", "a", encoding="utf-8") if out is not None else None  # noqa: SIM115
    print(f"watching {args.source}: a {args.window:g} s window every {args.hop:g} s (Ctrl-C ends)", file=sys.stderr)
    import signal

    with contextlib.suppress(NotImplementedError, RuntimeError):  # Ctrl-C: stop reading, finish what is out, write
        loop.add_signal_handler(signal.SIGINT, reader.stop.set)
        loop.add_signal_handler(signal.SIGTERM, reader.stop.set)
    reader.start()
    try:
        while True:
            try:
                answer = await asyncio.wait_for(session.answers.get(), timeout=0.2)
            except TimeoutError:
                if not reader.is_alive():
                    await session.drain()
                    if session.answers.empty():
                        break
                continue
            record = answer.to_json()
            answers.append(record)
            if sink is not None:  # on disk before it is printed: a killed run has every answer it showed
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            print(json.dumps(record) if args.json else answer_line(answer), flush=True)
    finally:
        reader.stop.set()
        if sink is not None:
            sink.close()
        await session.drain()
        await engine.shutdown()
    if reader.error is not None:
        raise reader.error
    if out is not None:
        labels = label_space(engine.label_space) if args.task == "expr" else (
            ["absent", "present"] if args.task == "ah" else [])  # fmt: skip
        report = summary(answers, session.stats, args.hop)
        with atomic_path(out / "timeline.png") as tmp:
            timeline_picture(answers, args.task, list(labels), args.hop).save(tmp, format="PNG")
        atomic_write_text(out / "summary.json", json.dumps(report, indent=1))
    stats = session.stats
    print(f"{stats.answered} answers, {stats.skipped} windows skipped, {stats.failed} failed; latency p50 "
          f"{stats.latency(50) or 0:.2f} s, p95 {stats.latency(95) or 0:.2f} s", file=sys.stderr)  # fmt: skip
    return 0


def add_arguments(parser) -> None:
    from mllm.output import TASKS
    from serve.analyze import MODEL_ENV

    parser.add_argument("source", help="a camera device (/dev/video0), a stream URL (rtsp://, http://) or a file")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV),
                        help=f"EmoReason model folder (default: ${MODEL_ENV})")  # fmt: skip
    parser.add_argument("--task", default="expr", choices=TASKS, help="the question asked (default: expr)")
    parser.add_argument("--window", type=float, default=2.0, help="seconds each answer looks at (default 2)")
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between answers (default 1)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames a second tracked and kept (default 5)")
    parser.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="play a file in real time (default), or as fast as it decodes")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per answer instead of a line")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write answers.jsonl as it goes, then timeline.png and summary.json")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=160, help="tokens per answer (default 160)")
    parser.add_argument("--dtype", default=None, help="vLLM dtype (default: as `serve`)")
    parser.add_argument("--compile", action="store_true", help="compiled graphs (slower start, faster answers)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    from serve.engine import add_parallel_arguments

    add_parallel_arguments(parser)


def run(args) -> int:
    if not args.model:
        from serve.analyze import MODEL_ENV

        raise ValueError(f"no model: pass --model DIR or set {MODEL_ENV}")
    for name in ("window", "hop", "fps"):
        value = getattr(args, name)
        if not (value > 0 and value < 3600):
            raise ValueError(f"--{name}: must be a positive number below 3600, got {value}")
    from mllm.output import think_budget

    think_budget(args.task, "abaw_expr", args.max_new_tokens)
    with open_source(args.source) as container:  # refused in one line before anything loads or is written
        if not container.streams.video:
            raise ValueError(f"{args.source}: no video stream (watch reads a camera, a stream or a video file)")
    out = None
    if args.out:
        from mllm.outputs import claim_output_dir

        protect = [args.model] + ([args.source] if Path(args.source).exists() else [])
        out = claim_output_dir(args.out, protect=protect, what="--out", kind="watch")
    try:
        return asyncio.run(watch(args, out))
    except KeyboardInterrupt:
        print("watch: stopped", file=sys.stderr)
        return 130
