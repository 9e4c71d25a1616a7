"""Live analysis: a session keeps only its window and skips windows (counted) while an answer is out, so memory and
latency stay bounded on a slow machine; `emoreason watch` plays a real face clip in real time, answers every hop,
sees the face while it is there and not after the subject left, and a SIGKILL keeps every printed answer."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mllm.samples import synthetic

REPO = Path(__file__).resolve().parents[2]


class SlowEngine:
    """The engine's surface a live session uses, answering after `delay` seconds with a parseable answer."""

    def __init__(self, processor, delay: float):
        from serve.engine import Delta

        self.processor, self.delay, self.rendered, self.Delta = processor, delay, [], Delta

    def served_label_space(self, model=None):
        return "abaw_expr"

    async def embed_rendered(self, rows, model=None):
        self.rendered.append(rows)
        await asyncio.sleep(self.delay)
        return object()

    def sampling_params(self, task, max_tokens=160, model=None):
        return None

    async def stream(self, messages, **kwargs):
        yield self.Delta("<think>AU6 and AU12 are present.</think><answer>Happiness</answer>", [], "stop")

    def parse(self, text, task, model=None):
        from serve.engine import parsed_result

        return parsed_result(text, task, "abaw_expr")


def test_a_slow_engine_skips_windows_and_keeps_memory_and_latency_bounded(tiny_processor):
    from serve.live import LiveSession

    fps, seconds, delay = 8, 9.0, 2.2  # each answer takes more than two hops
    frames = synthetic.face_frames(int(fps * seconds))  # 360 x 640, as a webcam's
    engine = SlowEngine(tiny_processor, delay)
    kept, rows = [], []

    async def play() -> LiveSession:
        session = LiveSession(engine, window_s=2.0, hop_s=1.0)
        started = time.monotonic()
        for i, rgb in enumerate(frames):
            t = i / fps
            await asyncio.sleep(max(0.0, started + t - time.monotonic()))
            await asyncio.to_thread(session.add_frame, t, rgb)
            session.add_audio(t, np.zeros(16000 // fps, np.float32))
            await session.tick(t)
            kept.append(session.kept_bytes())
            rows.append(len(session.tracker._rows))
        await session.drain()
        return session

    session = asyncio.run(play())
    answers = [session.answers.get_nowait() for _ in range(session.answers.qsize())]
    stats = session.stats
    # 7 windows end by the last frame (8.875 s): at 2, 3, ..., 8 s; answers take 2.2 s, so most are skipped, none
    # queued
    assert stats.skipped >= 3 and stats.answered + stats.skipped + stats.failed == 7, stats
    assert stats.answered == len(answers) >= 2 and not stats.failed
    assert all(a.ok and a.fields == {"label": "Happiness"} and a.face_seen for a in answers), answers
    assert max(stats.latencies_s) < delay + 1.0  # bounded: never an answer waiting behind another
    frame_bytes = frames[0].nbytes + (16000 // fps) * 4
    assert max(kept) <= (2.0 * fps + 2) * frame_bytes  # the window's frames and audio, not the session's
    assert max(rows) <= 2.0 * fps + 2  # the tracker forgets too
    starts = [a.start_s for a in answers]
    assert all(abs(a.end_s - a.start_s - 2.0) < 1e-6 for a in answers) and starts == sorted(starts)
    # every window asked about held the window's frames, tracked, and its audio
    first = engine.rendered[0]
    assert first["pixel_values"].shape[0] >= 1 and bool(first["image_has_face"].all()) and "audio_values" in first


def test_refused_settings(tiny_processor):
    from serve.live import LiveSession

    with pytest.raises(ValueError, match="unknown task"):
        LiveSession(SlowEngine(tiny_processor, 0), task="mood")
    with pytest.raises(ValueError, match="positive"):
        LiveSession(SlowEngine(tiny_processor, 0), hop_s=0)


@pytest.fixture(scope="module")
def leaving_clip(tmp_path_factory):
    """8 s of a real face (the astronaut) with speech; the subject leaves the frame at 4 s."""
    frames = synthetic.face_frames(200, absent=range(100, 200))
    audio = synthetic.speech_or_tone("I am not sure how I feel about this, maybe it is fine after all.", 8.0)
    return synthetic.write_video(tmp_path_factory.mktemp("live") / "leaving.mp4", frames, fps=25, audio=audio)


def _watch(tiny_dir, clip, out, *extra):
    cmd = [sys.executable, "-m", "mllm.cli", "watch", str(clip), "--model", str(tiny_dir / "emoreason"), "--json",
           "--dtype", "float32", "--out", str(out), *map(str, extra)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMOREASON_CACHE": str(out.parent / "cache")}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # an engine start and 8 s of real-time playback
def test_watch_a_clip_in_real_time(tiny_dir, leaving_clip, tmp_path):
    out = tmp_path / "watch"
    proc = _watch(tiny_dir, leaving_clip, out, "--window", 2, "--hop", 2)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    answers = [json.loads(line) for line in stdout.splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    # windows end every hop, at 2, 4, 6 and 8 s; each is answered or, while an answer is out, skipped
    assert len(answers) + summary["skipped_windows"] == 4 and len(answers) >= 2, (answers, summary)
    for a in answers:
        assert a["ok"] and a["error"] is None and a["fields"]["label"], a
        assert a["end_s"] in (2.0, 4.0, 6.0, 8.0) and a["end_s"] - a["start_s"] == pytest.approx(2.0)
        # the face is seen while the subject is in the frame (until 4 s), and not after it left
        assert a["face_seen"] == (a["start_s"] < 4.0), a
        assert 0 < a["latency_s"] < 10
    assert [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()] == answers
    assert summary["answers"] == len(answers) and summary["latency_s"]["p50"] > 0
    assert (out / "timeline.png").stat().st_size > 1000
    assert "answers" in stderr and "skipped" in stderr


@pytest.mark.slow
def test_sigkill_keeps_every_printed_answer(tiny_dir, leaving_clip, tmp_path):
    out = tmp_path / "watch"
    proc = _watch(tiny_dir, leaving_clip, out, "--window", 2, "--hop", 1)
    printed = []
    deadline = time.time() + 600
    while len(printed) < 2:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        if line.strip():
            printed.append(json.loads(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert kept[: len(printed)] == printed  # every answer printed is on disk, and the file parses


@pytest.mark.parametrize(
    "case",
    ["missing-file", "bad-hop", "foreign-out", "no-video"],
)
def test_watch_refuses_bad_input_in_one_line(case, tiny_dir, tmp_path, speech_or_tone):
    clip = tmp_path / "clip.mp4"
    synthetic.write_video(clip, synthetic.face_frames(10), fps=25)
    out = tmp_path / "out"
    extra, names = [], []
    source = clip
    if case == "missing-file":
        source, names = tmp_path / "nope.mp4", ["nope.mp4", "no such file"]
    elif case == "bad-hop":
        extra, names = ["--hop", "0"], ["--hop", "positive"]
    elif case == "foreign-out":
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
        names = ["out"]
    else:
        source = synthetic.write_audio(tmp_path / "speech.wav", speech_or_tone)
        names = ["speech.wav", "no video"]
    emoreason = str(Path(sys.executable).parent / "emoreason")
    cmd = [emoreason, "watch", str(source), "--model", str(tiny_dir / "emoreason"), "--out", str(out),
           "--no-realtime", "--dtype", "float32", *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and all(n in errors[0] for n in names), done.stderr[-2000:]
    if case == "foreign-out":
        assert (out / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------------------------
# /v1/live on the shared server, driven by a Python WebSocket client


def _jpeg(rgb) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def test_the_live_websocket_answers_a_streamed_clip_and_refuses_bad_events(server):
    import base64

    import websockets

    url = server["url"].replace("http://", "ws://") + "/v1/live"
    auth = {"Authorization": f"Bearer {server['key']}"}
    fps = 5
    frames = synthetic.face_frames(5 * fps)
    speech = synthetic.speech_or_tone("I am not sure how I feel about this, maybe it is fine.", 5.0)
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")

    async def talk() -> tuple[list[dict], list[dict]]:
        answers, errors = [], []
        async with websockets.connect(url, additional_headers=auth, max_size=None) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["session"]["task"] == "expr"
            await ws.send(json.dumps({"type": "session.update", "session": {"window_s": 2, "hop_s": 1}}))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            bad = [
                {"type": "input_video_frame.append", "timestamp_s": 0.0, "image": "not base64!"},
                {"type": "input_video_frame.append", "timestamp_s": -1, "image": _jpeg(frames[0])},
                {
                    "type": "input_video_frame.append",
                    "timestamp_s": 0.0,
                    "image": _jpeg(np.zeros((1200, 1800, 3), np.uint8)),
                },  # over the pixel limit  # fmt: skip
                {"type": "conversation.item.create"},
                {"type": "session.update", "session": {"model": "gpt-9"}},
            ]
            for event in bad:
                await ws.send(json.dumps(event))
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error", reply
                errors.append(reply["error"])
            for i, rgb in enumerate(frames):
                t = i / fps
                await ws.send(
                    json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "timestamp_s": t,
                            "audio": base64.b64encode(pcm[i * 3200 : (i + 1) * 3200].tobytes()).decode(),
                        }
                    )
                )
                await ws.send(json.dumps({"type": "input_video_frame.append", "timestamp_s": t, "image": _jpeg(rgb)}))
                await asyncio.sleep(1 / fps)
            deadline = time.time() + 120
            while len(answers) < 2 and time.time() < deadline:
                try:
                    event = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
                except TimeoutError:
                    continue
                if event["type"] == "response.done":
                    answers.append(event["response"])
        return answers, errors

    answers, errors = asyncio.run(talk())
    assert [e["code"] for e in errors] == ["invalid_event"] * 5
    assert "base64" in errors[0]["message"] and "timestamp_s" in errors[1]["message"]
    assert "pixels" in errors[2]["message"] and "unknown event type" in errors[3]["message"]
    assert "gpt-9" in errors[4]["message"]
    assert len(answers) >= 2, answers
    for a in answers:
        assert a["ok"] and a["fields"]["label"] and a["face_seen"] and a["end_s"] - a["start_s"] == pytest.approx(2)

    async def refused(headers: dict) -> int:
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                await ws.recv()
        except websockets.exceptions.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
        except websockets.exceptions.InvalidStatus as exc:
            return exc.response.status_code
        return 0

    assert asyncio.run(refused({"Authorization": "Bearer wrong"})) in (1008, 403)

    async def too_many() -> int:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):  # the server's limit
                ws = await stack.enter_async_context(websockets.connect(url, additional_headers=auth))
                await ws.recv()
            return await refused(auth)

    assert asyncio.run(too_many()) in (1013, 403)
    import httpx

    assert httpx.get(server["url"] + "/health", timeout=10).json()["status"] == "ok"  # still serving


def test_the_demo_live_tabs_share_the_session_limit_end_when_idle_and_restart_on_a_new_question(tiny_processor):
    from serve.live_api import LiveLimits
    from serve.live_demo import IDLE_S, LiveTabs

    now = [0.0]
    counter = {"count": 1}  # one /v1/live session is open
    tabs = LiveTabs(SlowEngine(tiny_processor, 0), LiveLimits(sessions=3), counter, clock=lambda: now[0])
    first = tabs.tab("a", "expr", None)
    assert tabs.tab("a", "expr", None) is first and counter["count"] == 2
    tabs.tab("b", "expr", None)
    with pytest.raises(RuntimeError, match="at most 3 live sessions"):
        tabs.tab("c", "expr", None)
    assert counter["count"] == 3
    again = tabs.tab("a", "va", None)  # a new question: a new session, the slot kept
    assert again is not first and again.session.task == "va" and counter["count"] == 3
    tabs.end("b")  # its browser tab closed
    assert counter["count"] == 2 and "b" not in tabs.tabs
    now[0] += IDLE_S + 1  # "a" stopped streaming; "c" starts and "a" is ended
    tabs.tab("c", "expr", None)
    assert set(tabs.tabs) == {"c"} and counter["count"] == 2


@pytest.mark.parametrize("task", ["expr", "au", "va", "ah"])
def test_the_live_timeline_draws_each_task_and_leaves_unanswered_time_pale(task):
    from eval.pictures import CLASS_COLOURS, INVALID, live_timeline_picture

    fields = {"expr": {"label": "Fear"}, "au": {"aus": ["AU12"]}, "va": {"valence": 0.5, "arousal": -0.5},
              "ah": {"ambivalence_hesitancy": "present"}}[task]  # fmt: skip
    labels = {"expr": ["Neutral", "Anger", "Disgust", "Fear"], "ah": ["absent", "present"]}.get(task, [])

    def answer(end, ok=True, face=True):
        return {"start_s": end - 2, "end_s": end, "task": task, "ok": ok, "fields": fields if ok else {},
                "face_seen": face, "error": None}  # fmt: skip

    answers = [answer(2.0), answer(3.0), answer(5.0, ok=False), answer(6.0, face=False)]
    picture = np.asarray(live_timeline_picture(answers, task, labels, hop_s=1.0, span_s=60, now_s=60))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    if task in ("expr", "ah"):
        assert CLASS_COLOURS[labels.index(next(iter(fields.values())))] in colours and INVALID in colours
    elif task == "au":
        assert CLASS_COLOURS[6 % len(CLASS_COLOURS)] in colours  # AU12 is the 7th ABAW AU's row
    else:
        assert (38, 139, 210) in colours  # the curves
    assert (60, 60, 60) in colours and (225, 225, 225) in colours  # face seen, and not
    # the whole session, as `watch` draws it, and an empty one
    assert live_timeline_picture(answers, task, labels).size[0] > 900
    assert live_timeline_picture([], task, labels).size[0] > 900


def test_a_microphone_chunk_outside_the_upload_folder_is_neither_read_nor_deleted(tiny_processor, tmp_path):
    from serve.live_api import LiveLimits
    from serve.live_demo import LiveTabs, take_audio_chunk

    uploads = (tmp_path / "uploads").resolve()
    hashed = uploads / ("0f" * 32)  # Gradio writes an upload as FOLDER/<sha256 hex>/<name>
    hashed.mkdir(parents=True)
    mine = tmp_path / "mine.wav"
    synthetic.write_audio(mine, synthetic.tone(440, 0.5))
    link = hashed / "link.wav"
    link.symlink_to(mine)
    # the operator's own files in the upload folder (GRADIO_TEMP_DIR may be theirs), outside Gradio's layout
    loose = synthetic.write_audio(uploads / "loose.wav", synthetic.tone(440, 0.5))
    (uploads / "theirs").mkdir()
    theirs = synthetic.write_audio(uploads / "theirs" / "take.wav", synthetic.tone(440, 0.5))
    tabs = LiveTabs(SlowEngine(tiny_processor, 0), LiveLimits())
    tabs.tab("k", "expr", None)
    for named in (mine, link, "/etc/passwd", loose, theirs):
        asyncio.run(take_audio_chunk(tabs, str(named), "expr", None, "k", uploads))
    assert mine.is_file() and link.is_symlink() and os.path.isfile("/etc/passwd")
    assert loose.is_file() and theirs.is_file() and uploads.is_dir()
    assert tabs.tabs["k"].session.kept_bytes() == 0
    link.unlink()
    chunk = synthetic.write_audio(hashed / "audio.wav", synthetic.tone(440, 0.5))  # Gradio's upload
    asyncio.run(take_audio_chunk(tabs, str(chunk), "expr", None, "k", uploads))
    assert not chunk.exists() and not hashed.exists() and tabs.tabs["k"].session.kept_bytes() > 0  # read, deleted
