"""Live analysis: timestamped frames and audio in as they arrive, an answer about the last `window` seconds out
every `hop` seconds. `emoreason watch` drives it from a camera, a stream or a file (serve/watch.py).

    session = LiveSession(engine, task="expr", window_s=2.0, hop_s=1.0)
    session.add_frame(t, rgb)                  # in a worker thread: the face is tracked here, frame by frame
    session.add_audio(t, samples_16k)
    await session.tick(t)                       # on the engine's event loop: asks about [t - window, t] when due
    answer = await session.answers.get()        # LiveAnswer: times, label (or the task's fields), reasoning, ...

Only the last `window` seconds of frames, landmarks and audio are kept: memory is bounded by the window, never by
the session's length. The face tracker's state carries from frame to frame (the subject followed, not detected
afresh in every window). Every `hop` seconds the current window is asked about through the engine, with the
same processor, seam and constrained answer as every other request; when the previous answer is not back yet the
window is skipped and counted, never queued, so latency stays bounded when the machine is slower than the stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from mllm.media import AUDIO_SAMPLE_RATE

NOT_FIELDS = ("task", "ok", "think", "cited_aus", "error", "message")  # what `parsed_result` adds to a task's answer


@dataclass
class LiveAnswer:
    """One window's answer. `latency_s`: from the moment the window's last frame arrived to the answer."""

    start_s: float
    end_s: float
    task: str
    ok: bool
    text: str
    fields: dict  # the task's answer: {"label": ...}, {"aus": [...]}, {"valence", "arousal"}, ...
    think: str | None
    cited_aus: list[str]
    face_seen: bool
    latency_s: float
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LiveStats:
    answered: int = 0
    skipped: int = 0  # windows not asked about because the previous answer was not back
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def latency(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else None


class LiveSession:
    """One stream's rolling windows. `add_frame` / `add_audio` may be called from a worker thread; `tick`
    runs on the engine's event loop."""

    def __init__(
        self,
        engine,
        *,
        task: str = "expr",
        window_s: float = 2.0,
        hop_s: float = 1.0,
        model: str | None = None,
        max_tokens: int = 160,
        question: str | None = None,
        frames_per_window: int | None = None,
        tracker=None,
        clock=time.monotonic,
    ):
        from mllm.labels import label_space
        from mllm.output import TASKS
        from mllm.output import question as task_question

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        if not (window_s > 0 and hop_s > 0):
            raise ValueError(f"window and hop must be positive seconds, got window {window_s}, hop {hop_s}")
        self.engine, self.task, self.model = engine, task, model
        self.window_s, self.hop_s, self.max_tokens = float(window_s), float(hop_s), max_tokens
        labels = label_space(engine.served_label_space(model)) if task == "expr" else ()
        self.question = question or task_question(task, labels)
        self.limits = {"frames": frames_per_window} if frames_per_window else None
        if tracker is None:
            from mllm.face import SubjectTracker

            tracker = SubjectTracker(engine.processor.tracker_settings())
        self.tracker = tracker
        self.clock = clock
        self._lock = threading.Lock()  # frames arrive in a worker thread; windows are cut on the event loop
        self._frames: deque = deque()  # (t, rgb, arrival time)
        self._audio: deque = deque()  # (t start, samples)
        self._next_end_s: float | None = None
        self._busy: asyncio.Task | None = None
        self.answers: asyncio.Queue = asyncio.Queue(maxsize=64)
        self.stats = LiveStats()

    # Input ---------------------------------------------------------------------------------------------------------

    def add_frame(self, t: float, rgb: np.ndarray) -> None:
        """A frame at `t` seconds of the stream: tracked now, kept while inside the window."""
        with self._lock:
            self.tracker.update(rgb, float(t))
            self._frames.append((float(t), rgb, self.clock()))
            self._forget(float(t))  # the stream's clock is the frames': audio is trimmed by it too

    def add_audio(self, t: float, samples: np.ndarray) -> None:
        """Audio samples (16 kHz mono float) starting at `t` seconds of the stream."""
        with self._lock:
            self._audio.append((float(t), np.asarray(samples, dtype=np.float32)))
            # Audio may run ahead of the frames (a container interleaves them loosely): it is trimmed by its own
            # clock only past a window and a margin, and never trims frames.
            end = float(t) + len(samples) / AUDIO_SAMPLE_RATE
            while (
                self._audio
                and self._audio[0][0] + len(self._audio[0][1]) / AUDIO_SAMPLE_RATE < end - 2 * self.window_s
            ):
                self._audio.popleft()

    def _forget(self, now_s: float) -> None:
        start = now_s - self.window_s
        while self._frames and self._frames[0][0] < start - 1e-9:
            self._frames.popleft()
        while self._audio and self._audio[0][0] + len(self._audio[0][1]) / AUDIO_SAMPLE_RATE < start:
            self._audio.popleft()
        self.tracker.forget_before(start)

    def kept_bytes(self) -> int:
        """What the session holds of the stream (frames and audio), for tests and the benchmark."""
        with self._lock:
            return sum(f[1].nbytes for f in self._frames) + sum(a[1].nbytes for a in self._audio)

    # Windows -------------------------------------------------------------------------------------------------------

    def window(self, end_s: float):
        """The frames (seconds since the window began, RGB, landmarks or None) and audio of [end - window, end]."""
        with self._lock:
            return self._window(end_s)

    def _window(self, end_s: float):
        start = end_s - self.window_s
        rows = {round(t, 6): points for t, _, points in self.tracker.rows_since(start)}
        frames = [(t - start, rgb, rows.get(round(t, 6))) for t, rgb, _ in self._frames if start - 1e-9 <= t <= end_s]
        pieces = []
        for t0, samples in self._audio:
            first = max(0, int(round((start - t0) * AUDIO_SAMPLE_RATE)))
            last = min(len(samples), int(round((end_s - t0) * AUDIO_SAMPLE_RATE)))
            if last > first:
                pieces.append(samples[first:last])
        audio = np.concatenate(pieces) if pieces else None
        return frames, audio

    async def tick(self, now_s: float) -> None:
        """Ask about the window ending now when a hop is due; skip it (counted) while the last answer is out."""
        if self._next_end_s is None:
            with self._lock:
                first = self._frames[0][0] if self._frames else now_s
            self._next_end_s = first + self.window_s
        while now_s + 1e-9 >= self._next_end_s:
            end = self._next_end_s
            self._next_end_s += self.hop_s
            if self._busy is not None and not self._busy.done():
                self.stats.skipped += 1
                continue
            with self._lock:
                frames, audio = self._window(end)
                arrived = max((f[2] for f in self._frames if f[0] <= end + 1e-9), default=self.clock())
            if not frames:
                continue
            self._busy = asyncio.create_task(self._answer(end, frames, audio, arrived))

    async def drain(self) -> None:
        """Wait for the answer still out, if any."""
        if self._busy is not None:
            await asyncio.gather(self._busy, return_exceptions=True)

    async def _answer(self, end_s: float, frames, audio, arrived: float) -> None:
        start = end_s - self.window_s
        face = any(points is not None for _, _, points in frames)
        try:
            rows = await asyncio.to_thread(self.engine.processor.window, frames, audio, self.question, self.limits)
            prompt = await self.engine.embed_rendered(rows, self.model)
            params = self.engine.sampling_params(self.task, max_tokens=self.max_tokens, model=self.model)
            text = []
            async for delta in self.engine.stream([], model=self.model, task=self.task, params=params, embeds=prompt):
                text.append(delta.text)
            joined = "".join(text)
            parsed = self.engine.parse(joined, self.task, self.model)
            fields = {k: v for k, v in parsed.items() if k not in NOT_FIELDS}
            answer = LiveAnswer(start, end_s, self.task, bool(parsed.get("ok")), joined, fields, parsed.get("think"),
                                list(parsed.get("cited_aus") or []), face, self.clock() - arrived)  # fmt: skip
            self.stats.answered += 1
            self.stats.latencies_s.append(answer.latency_s)
        except Exception as exc:  # one window failing (a bad frame) does not end the session
            answer = LiveAnswer(start, end_s, self.task, False, "", {}, None, [], face, self.clock() - arrived,
                                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            self.stats.failed += 1
        if self.answers.full():  # nobody is reading: the oldest answer goes, memory stays bounded
            self.answers.get_nowait()
        self.answers.put_nowait(answer)
