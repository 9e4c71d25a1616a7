"""The demo's Live tab: the browser's camera (and, when the user turns it on, its microphone) streams to a live
session (serve/live.py); the current answer and its reasoning update in place, and a timeline of the last minute
grows beside them.

Built on Gradio's own streaming components (`gr.Image(streaming=True)` for the webcam, `gr.Audio(streaming=True)`
for the microphone) rather than FastRTC: they need no extra package or WebRTC connection (so they work wherever
the demo works, behind the same login and the same upload rules), and a live session wants a few frames a second,
not video-call rates. The camera sends a JPEG every `FRAME_EVERY_S` seconds; the microphone sends short WAV chunks,
which are read and deleted at once. One live session per browser tab, `LiveLimits.sessions` at once on a server
(with the API's), each ended when its tab closes, its stream stops for `IDLE_S` seconds, or after
`LiveLimits.seconds`. Nothing of a session is kept past its window: frames and audio stay in memory, the answers
of the last minute drive the picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field

import gradio as gr  # module level: the handlers' `gr.Request` annotations must resolve here
import numpy as np

FRAME_EVERY_S = 0.2  # the camera's frames a second: 5, as `emoreason watch --fps`
MAX_SIDE = 640  # frames are tracked at most this size, as in `watch`
TIMELINE_S = 60.0
IDLE_S = 10.0


@dataclass
class _Tab:
    session: object
    task: str
    model: str | None
    t0: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answers: deque = field(default_factory=deque)
    last_seen: float = 0.0


def answer_markdown(answer: dict, stats) -> str:
    """The latest answer as the Live tab shows it: the answer, its window, the face, the latency."""
    from serve.demo_common import answer_markdown as parsed_markdown

    if answer["error"]:
        text = f"This window failed: {answer['error']}"
    else:
        text = parsed_markdown({"ok": answer["ok"], "task": answer["task"], **answer["fields"],
                                "cited_aus": answer["cited_aus"], "error": "no answer",
                                "message": "the model's text did not parse"})  # fmt: skip
    face = "face seen" if answer["face_seen"] else "**no face** in this window"
    return (f"{text}  \n{answer['start_s']:.1f}-{answer['end_s']:.1f} s · {face} · answered in "
            f"{answer['latency_s']:.2f} s · {stats.answered} answers, {stats.skipped} windows skipped")  # fmt: skip


class LiveTabs:
    """The live sessions of the demo's browser tabs, keyed by Gradio's session hash."""

    def __init__(self, engine, limits, counter=None, clock=time.monotonic):
        self.engine, self.limits, self.clock = engine, limits, clock
        self.counter = counter if counter is not None else {"count": 0}  # shared with /v1/live
        self.tabs: dict[str, _Tab] = {}

    def _end(self, key: str) -> None:
        tab = self.tabs.pop(key, None)
        if tab is not None:
            self.counter["count"] -= 1

    def end(self, key: str) -> None:
        """The tab closed or its stream stopped."""
        self._end(key)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, t in self.tabs.items() if now - t.last_seen > IDLE_S]:
            self._end(key)

    def tab(self, key: str, task: str, model: str | None) -> _Tab:
        """This tab's session, started (or restarted when the question or model changed)."""
        from serve.live import LiveSession

        self._expire()
        tab = self.tabs.get(key)
        if tab is not None and (tab.task, tab.model) != (task, model):
            self._end(key)
            tab = None
        if tab is None:
            if self.counter["count"] >= self.limits.sessions:
                raise RuntimeError(f"this server runs at most {self.limits.sessions} live sessions at once; "
                                   "try again when one ends")  # fmt: skip
            session = LiveSession(self.engine, task=task, model=model)
            tab = _Tab(session, task, model, t0=self.clock())
            self.tabs[key] = tab
            self.counter["count"] += 1
        tab.last_seen = self.clock()
        return tab


def _smaller(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    scale = MAX_SIDE / max(rgb.shape[:2])
    if scale >= 1:
        return np.ascontiguousarray(rgb[..., :3])
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize(size, Image.BILINEAR))


def _written_by_gradio(path: str, folder) -> bool:
    """Gradio writes each upload as FOLDER/<sha256 hex>/<name>: only such a file is this server's to delete (an
    operator's GRADIO_TEMP_DIR may hold files of their own, and the upload folder itself is never removed)."""
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(parent)
    return os.path.dirname(parent) == str(folder) and len(name) == 64 and all(c in "0123456789abcdef" for c in name)


async def take_audio_chunk(tabs: LiveTabs, chunk, task: str, model, key: str, upload_folder) -> None:
    """A microphone chunk Gradio wrote into this server's upload folder: read into the tab's session, then
    deleted with its hash folder (the server keeps nothing of a request). Anything else it names is neither read
    nor deleted."""
    from mllm.media import load_audio
    from serve.demo_common import uploaded_file

    if not chunk or uploaded_file(chunk, upload_folder) is not None or not _written_by_gradio(chunk, upload_folder):
        return  # not this server's upload: never read, never removed
    try:
        tab = tabs.tabs.get(key)
        if tab is not None and (tab.task, tab.model) == (task, model):  # the camera starts a session
            audio = await asyncio.to_thread(load_audio, chunk)
            t = tabs.clock() - tab.t0 - len(audio.samples) / audio.sample_rate
            tab.session.add_audio(max(0.0, t), audio.samples)
    except Exception:  # noqa: BLE001 - a chunk that does not decode is one chunk of sound lost, not the session
        pass
    finally:  # the server keeps nothing of a request
        with contextlib.suppress(OSError):
            os.unlink(chunk)
            os.rmdir(os.path.dirname(chunk))


def add_live_tab(engine, names: list[str], labels_of, limits, counter, upload_folder):
    """The Live tab's components and events (call inside a `gr.Blocks`). `labels_of(model)`: the expression
    labels of a served model, for the timeline's legend."""
    from serve.demo_common import TASK_CHOICES

    tabs = LiveTabs(engine, limits, counter)

    gr.Markdown("Turn the camera on and press Record: every second the model answers about the last two "
                "seconds. Turn the microphone on to add what is said.")  # fmt: skip
    with gr.Row():
        with gr.Column(scale=1):
            camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                              elem_id="live-camera", webcam_options=gr.WebcamOptions(mirror=False))  # fmt: skip
            microphone = gr.Audio(sources=["microphone"], streaming=True, type="filepath",
                                  label="Microphone (optional)", elem_id="live-microphone")  # fmt: skip
            task = gr.Radio(TASK_CHOICES, value="expr", label="Question", elem_id="live-task")
            model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1)
        with gr.Column(scale=2):
            answer = gr.Markdown("Waiting for the camera…", elem_id="live-answer")
            reasoning = gr.Markdown("", elem_id="live-reasoning")
            timeline = gr.Image(label="The last minute", show_label=False, elem_id="live-timeline", interactive=False)

    async def on_frame(frame, task, model, request: gr.Request):
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            tab = tabs.tab(request.session_hash, task, model)
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        if tab.lock.locked():  # the last frame is still being tracked: this one is dropped, never queued
            return gr.skip(), gr.skip(), gr.skip()
        async with tab.lock:
            t = tabs.clock() - tab.t0
            await asyncio.to_thread(tab.session.add_frame, t, _smaller(frame))
        await tab.session.tick(t)
        fresh = []
        while not tab.session.answers.empty():
            fresh.append(tab.session.answers.get_nowait().to_json())
        if not fresh:
            return gr.skip(), gr.skip(), gr.skip()
        tab.answers.extend(fresh)
        while tab.answers and tab.answers[0]["end_s"] < t - TIMELINE_S:
            tab.answers.popleft()
        latest = fresh[-1]
        labels = list(labels_of(model)) if task == "expr" else (["absent", "present"] if task == "ah" else [])
        picture = await asyncio.to_thread(_timeline, list(tab.answers), task, labels, tab.session.hop_s, t)
        think = (latest["think"] or "").strip()
        return answer_markdown(latest, tab.session.stats), (f"**Reasoning:** {think}" if think else ""), picture

    async def on_audio(chunk, task, model, request: gr.Request):
        await take_audio_chunk(tabs, chunk, task, model, request.session_hash, upload_folder)

    def on_stop(request: gr.Request):
        tabs.end(request.session_hash)

    camera.stream(on_frame, [camera, task, model], [answer, reasoning, timeline], stream_every=FRAME_EVERY_S,
                  time_limit=limits.seconds, concurrency_limit=None, show_progress="hidden")  # fmt: skip
    microphone.stream(on_audio, [microphone, task, model], None, stream_every=0.5, time_limit=limits.seconds,
                      concurrency_limit=None, show_progress="hidden")  # fmt: skip
    camera.clear(on_stop)
    return tabs, on_stop


def _timeline(answers, task, labels, hop_s, now_s):
    from eval.pictures import live_timeline_picture

    title = f"The last minute (each answer colours the last {hop_s:g} s of its window)"
    now_s = max(now_s, TIMELINE_S)  # the axis holds still for the first minute
    return live_timeline_picture(answers, task, labels, hop_s=hop_s, span_s=TIMELINE_S, now_s=now_s, title=title)
