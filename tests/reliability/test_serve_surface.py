"""The endpoint and the demo as a hostile client meets them, on the session's live server (tests/conftest.py).

Each refusal is a 4xx with OpenAI's error body naming the field or part; no file of the server's machine reaches a
client whatever key names it (a content part, a video's `frames` list, a Gradio file reference); the user's files
are unchanged; and the server still answers /health within seconds. A heavy request beside a light one does not
hold the light one up, an abandoned one stops, and the server keeps no face data of any request.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import checksums


def _data_url(rgb: np.ndarray, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=40) if fmt == "JPEG" else Image.fromarray(rgb).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _noise(seed: int) -> str:
    """A camera-sized picture with no face: the detector's whole cascade runs on it (the costly case)."""
    return _data_url(np.random.default_rng(seed).integers(0, 255, (480, 640, 3), dtype=np.uint8))


def _user(*parts, text: str = "Which expression?") -> list:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _post(server, body=None, timeout: float = 120, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server['key']}", **kwargs.pop("headers", {})}
    return httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=timeout, **kwargs)


def _healthy_within(server, seconds: float = 5.0) -> dict:
    t0 = time.monotonic()
    health = httpx.get(server["url"] + "/health", timeout=seconds)
    assert health.status_code == 200 and time.monotonic() - t0 < seconds
    return health.json()


@pytest.fixture(scope="module")
def planted(server, tmp_path_factory):
    """What a hostile client aims at: a secret outside the allowed folder, a FIFO and a link inside it."""
    secret = tmp_path_factory.mktemp("secret") / "secret.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(secret)
    allowed = Path(server["allowed"])
    fifo = allowed / "fifo.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    link = allowed / "link.jpg"
    if not link.is_symlink():
        link.symlink_to(secret)
    return {"secret": secret, "fifo": fifo, "link": link, "allowed": allowed}


TEXT = [{"role": "user", "content": "How do I look?"}]

# (case, body builder (planted -> body), status, code, words the message must hold)
API_CASES = [
    ("frames naming a file outside", lambda p: {"messages": _user({"type": "video", "frames": [str(p["secret"])]})},
     403, "media_not_allowed", "server-local files"),
    ("frames naming a missing file", lambda p: {"messages": _user({"type": "video", "frames": ["/no/such.jpg"]})},
     403, "media_not_allowed", "server-local files"),
    ("image naming /etc/passwd", lambda p: {"messages": _user({"type": "image", "image": "/etc/passwd"})},
     403, "media_not_allowed", "content part 0"),
    ("video_url file://", lambda p: {"messages": _user({"type": "video_url", "video_url": {"url": "file:///etc/passwd"}})},
     403, "media_not_allowed", "server-local files"),
    ("a link out of the allowed folder", lambda p: {"messages": _user({"type": "image", "image": str(p["link"])})},
     403, "media_not_allowed", "server-local files"),
    ("frames through a link", lambda p: {"messages": _user({"type": "video", "frames": [str(p["link"])]})},
     403, "media_not_allowed", "server-local files"),
    ("a FIFO in the allowed folder", lambda p: {"messages": _user({"type": "image", "image": str(p["fifo"])})},
     400, "invalid_media", "not a regular file"),
    ("nine media parts", lambda p: {"messages": _user(*[{"type": "image_url", "image_url": {"url": _noise(0)}}] * 9)},
     400, None, "at most 8 media parts"),
    ("max_tokens 0", lambda p: {"messages": TEXT, "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
    ("absurd top_logprobs", lambda p: {"messages": TEXT, "logprobs": True, "top_logprobs": 10**6},
     400, "invalid_request", "top_logprobs"),
    ("top_logprobs without logprobs", lambda p: {"messages": TEXT, "top_logprobs": 3},
     400, "invalid_request", "`logprobs` must be set to true"),
    ("logit_bias out of the vocabulary", lambda p: {"messages": TEXT, "logit_bias": {"99999999": 5}},
     400, "invalid_request", "logit_bias"),
    ("logit_bias too strong, streaming", lambda p: {"messages": TEXT, "logit_bias": {"5": 500}, "stream": True},
     400, "invalid_request", "-100..100"),
    ("tools required", lambda p: {"messages": TEXT, "tool_choice": "required",
                                  "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "unsupported", "tools"),
    ("a field not honoured", lambda p: {"messages": TEXT, "echo": True}, 400, "unsupported", "echo"),
    ("json response format", lambda p: {"messages": TEXT, "response_format": {"type": "json_object"}},
     400, "unsupported", "response_format"),
    ("n = 2", lambda p: {"messages": TEXT, "n": 2}, 400, "unsupported", "n > 1"),
]  # fmt: skip


@pytest.mark.parametrize("case, body, status, code, words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refusals(server, planted, case, body, status, code, words):
    before = checksums(planted["secret"].parent), checksums(planted["allowed"])
    t0 = time.monotonic()
    response = _post(server, {"max_tokens": 8, **body(planted)}, timeout=30)
    assert time.monotonic() - t0 < 20  # a FIFO never blocks the request (or the server)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"] and (code is None or error["code"] == code)
    assert str(planted["secret"]) not in error["message"]  # nothing about the server's files comes back
    assert (checksums(planted["secret"].parent), checksums(planted["allowed"])) == before
    _healthy_within(server)


def test_a_refused_file_says_the_same_whether_it_exists_or_not(server, planted):
    exists = _post(server, {"messages": _user({"type": "image", "image": str(planted["secret"])}), "max_tokens": 4})
    missing = _post(server, {"messages": _user({"type": "image", "image": str(planted["secret"]) + ".no"}),
                             "max_tokens": 4})  # fmt: skip
    assert exists.status_code == missing.status_code == 403
    assert exists.json()["error"]["message"] == missing.json()["error"]["message"]


def test_malformed_bodies_are_openai_errors_never_plain_500(server):
    deep = "[" * 1000 + "]" * 1000
    for content in ('{"messages": ' + deep + "}", '{"messages": [{"role": "user", "content": ' + deep + "}]}"):
        response = _post(server, content=content.encode(), headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json", response.text

    def chunks():  # no declared length: the limit is found while reading
        for _ in range(3):
            yield b" " * (1024 * 1024)

    response = _post(server, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    _healthy_within(server)


def test_the_official_client_reads_the_413_not_a_reset(server, client):
    import openai

    big = "data:image/png;base64," + base64.b64encode(b"\0" * (3 * 1024 * 1024)).decode()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="emoreason", messages=_user({"type": "image_url",
                                                                          "image_url": {"url": big}}))  # fmt: skip
    assert refused.value.status_code == 413 and "this server takes at most" in str(refused.value)


def test_logprobs_are_honoured_as_openai_shapes_them(server, client):
    answer = client.chat.completions.create(model="emoreason", messages=TEXT, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=3)  # fmt: skip
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-4)  # greedy: the sampled token is the top one
        assert entry.bytes == list(entry.token.encode())
    streamed = client.chat.completions.create(model="emoreason", messages=TEXT, max_tokens=6, temperature=0,
                                              logprobs=True, stream=True)  # fmt: skip
    tokens = [e.token for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
              for e in chunk.choices[0].logprobs.content]  # fmt: skip
    assert tokens == [e.token for e in content]


def test_a_heavy_request_does_not_hold_up_a_light_one(server):
    """Eight camera-sized pictures without a face (the detector's whole cascade, seconds each) beside a text-only
    question: the light one is answered while the heavy one is still being encoded."""
    heavy = {"messages": _user(*[{"type": "image_url", "image_url": {"url": _noise(i)}} for i in range(8)]),
             "max_tokens": 4}  # fmt: skip
    done = {}

    def send(name, body):
        _post(server, body, timeout=300).raise_for_status()
        done[name] = time.monotonic()

    worker = threading.Thread(target=send, args=("heavy", heavy))
    t0 = time.monotonic()
    worker.start()
    time.sleep(0.5)
    send("light", {"messages": TEXT, "max_tokens": 4})
    worker.join()
    assert done["light"] < done["heavy"], {k: v - t0 for k, v in done.items()}
    assert done["light"] - t0 < 60  # bounded, not queued behind the heavy one's encoding


def test_an_abandoned_request_stops_its_work(server):
    heavy = {"messages": _user(*[{"type": "image_url", "image_url": {"url": _noise(10 + i)}} for i in range(8)]),
             "max_tokens": 200}  # fmt: skip
    with pytest.raises(httpx.ReadTimeout):
        _post(server, heavy, timeout=1.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = _healthy_within(server)
        if health["active_requests"] == 0 and health["rendering"] == 0:
            break
        time.sleep(0.2)
    assert health["active_requests"] == 0 and health["rendering"] == 0, health


def test_the_server_keeps_no_face_data_of_requests(server, astronaut_png):
    face = _data_url(np.asarray(Image.open(astronaut_png).convert("RGB")), "PNG")
    assert _post(server, {"messages": _user({"type": "image_url", "image_url": {"url": face}}),
                          "max_tokens": 4}).status_code == 200  # fmt: skip
    assert not list(Path(server["cache"]).rglob("*.npz"))


def test_a_bounded_face_cache_evicts_the_oldest(tmp_path):
    from mllm.face import FaceCache

    cache = FaceCache(tmp_path, max_bytes=20_000)
    for i in range(40):
        cache.put(cache.key(str(i)), {"landmarks_68": np.random.default_rng(i).random((68, 2)).astype(np.float64)})
        time.sleep(0.002)
    total = sum(p.stat().st_size for p in cache.entries())
    assert total <= 20_000 and cache.get(cache.key("39")) is not None and cache.get(cache.key("0")) is None


# The demo, through Gradio's own HTTP API -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_session(server):
    session = httpx.Client(base_url=server["url"] + "/demo", timeout=60)
    assert session.post("/login", data={"username": "x", "password": server["key"]}).status_code == 200
    config = session.get("/config").json()
    fn = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "respond")
    uploads = next(Path("/tmp").glob(f"emoreason-demo-uploads-{server['proc'].pid}-*"), None)
    yield {"client": session, "fn": fn, "uploads": uploads}
    session.close()


def _join(demo, value, session_hash="hostile") -> httpx.Response:
    body = {"data": [value, None, None, "expr", "emoreason", []], "fn_index": demo["fn"],
            "session_hash": session_hash, "event_data": None, "trigger_id": None}  # fmt: skip
    return demo["client"].post("/gradio_api/queue/join", json=body)


def _file(path) -> dict:
    return {"path": str(path), "orig_name": "clip.mp4", "meta": {"_type": "gradio.FileData"}}


def test_demo_refuses_files_it_was_not_sent(server, demo_session, planted, video_with_audio):
    assert demo_session["uploads"] is not None and demo_session["uploads"].is_dir()
    inside_fifo = demo_session["uploads"] / "fifo.mp4"
    inside_link = demo_session["uploads"] / "link.mp4"
    if not inside_fifo.exists():
        os.mkfifo(inside_fifo)
    if not inside_link.is_symlink():
        inside_link.symlink_to(video_with_audio)
    before = checksums(planted["secret"].parent), checksums(planted["allowed"])
    for target in ("/etc/passwd", planted["secret"], planted["allowed"] / "link.jpg", planted["fifo"],
                   inside_fifo, inside_link, demo_session["uploads"] / ".." / "x.mp4"):  # fmt: skip
        t0 = time.monotonic()
        for value in (_file(target), {"video": _file(target)}, [_file(target)]):  # any key, any depth
            response = _join(demo_session, value)
            assert response.status_code == 403, (target, response.text)
            assert "file reference" in response.json()["error"]["message"]
        assert time.monotonic() - t0 < 10
        _healthy_within(server)
    assert demo_session["client"].get("/gradio_api/file=/etc/passwd").status_code in (403, 404)
    assert (checksums(planted["secret"].parent), checksums(planted["allowed"])) == before


def test_demo_answers_an_upload_then_keeps_nothing_of_it(server, demo_session, video_with_audio):
    with open(video_with_audio, "rb") as f:
        uploaded = demo_session["client"].post("/gradio_api/upload", files={"files": ("clip.mp4", f, "video/mp4")})
    uploaded.raise_for_status()
    path = Path(uploaded.json()[0])
    assert path.is_relative_to(demo_session["uploads"])
    assert _join(demo_session, _file(path), "honest").status_code == 200
    events = []
    with demo_session["client"].stream("GET", "/gradio_api/queue/data", params={"session_hash": "honest"}) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1].get("msg") == "process_completed":
                    break
    assert events[-1]["success"], events[-1]
    answer = events[-1]["output"]["data"][1]
    assert answer.startswith(("Expression:", "No parsable answer"))
    used = [p for p in demo_session["uploads"].rglob("*") if p.is_file() and p.suffix == ".mp4"
            and p.name not in ("fifo.mp4", "link.mp4")]  # fmt: skip
    assert not used, used  # the copy the demo analysed is deleted once answered
