"""The live endpoint on loopback, driven by the official `openai` client: answers equal transformers `generate`,
LoRA is chosen by model name, task-constrained answers always parse, 64 concurrent requests each get their own
answer, and every hostile request gets its 4xx while the server keeps serving."""

import asyncio
import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from mllm.labels import label_space

TASKS = ("expr", "au", "va", "ah")


def _png_url(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def _crops(n: int) -> list[str]:
    """n different images of the astronaut: crops at different places and sizes, some mirrored."""
    rgb, rng, urls = _astronaut(), np.random.default_rng(0), []
    for i in range(n):
        size = int(rng.integers(160, 400))
        y, x = (int(v) for v in rng.integers(0, 512 - size, 2))
        crop = rgb[y : y + size, x : x + size]
        urls.append(_png_url(crop[:, ::-1] if i % 2 else crop))
    return urls


def _user(url: str, text: str = "Which emotion?") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


@torch.no_grad()
def _transformers_text(model_dir, messages, max_new_tokens: int) -> str:
    from mllm.export import load_model
    from mllm.processor import EmoReasonProcessor

    model = load_model(model_dir, adapter="merge").eval()
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    tokens = model.generate(**processor([messages]), max_new_tokens=max_new_tokens, do_sample=False)[0]
    return processor.decode(tokens)


def test_models_and_health(server, client):
    assert sorted(m.id for m in client.models.list().data) == ["emoreason", "trained"]
    health = httpx.get(server["url"] + "/health").json()
    assert health["status"] == "ok"


def test_greedy_answer_equals_transformers_generate_streaming_or_not(client, tiny_dir):
    messages = _user(_crops(1)[0])
    answer = client.chat.completions.create(model="emoreason", messages=messages, max_tokens=12, temperature=0)
    text = answer.choices[0].message.content
    assert text == _transformers_text(tiny_dir / "emoreason", messages, 12)
    assert answer.usage.completion_tokens == 12 and answer.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model="emoreason", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_lora_and_new_modules_chosen_by_model_name(client, tiny_dir, sft_run):
    messages = _user(_crops(1)[0])
    plain = client.chat.completions.create(model="emoreason", messages=messages, max_tokens=16, temperature=0)
    trained = client.chat.completions.create(model="trained", messages=messages, max_tokens=16, temperature=0)
    assert trained.model == "trained"
    assert trained.choices[0].message.content == _transformers_text(sft_run / "model", messages, 16)
    assert trained.choices[0].message.content != plain.choices[0].message.content


@pytest.mark.parametrize("task", TASKS)
def test_task_constrained_answers_always_parse(client, task):
    from mllm.output import parse, question

    labels = label_space("basic7") if task == "expr" else ()
    for i, url in enumerate(_crops(3)):
        for model in ("emoreason", "trained"):
            out = client.chat.completions.create(model=model, messages=_user(url, question(task, labels)),
                                                 max_tokens=128, temperature=1.0, seed=i,
                                                 extra_body={"task": task})  # fmt: skip
            text, parsed = out.choices[0].message.content, out.model_extra["emoreason"]
            space = "basic7" if model == "trained" else "abaw_expr"
            assert parse(text, task, space).ok, text
            assert parsed["ok"] and parsed["task"] == task, parsed


def test_streamed_answer_carries_the_parsed_result_on_its_last_chunk(client):
    chunks = list(client.chat.completions.create(model="trained", messages=_user(_crops(1)[0]), max_tokens=64,
                                                 stream=True, temperature=0, extra_body={"task": "expr"}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1].model_extra["emoreason"]
    assert last["ok"] and f"<answer>{last['label']}</answer>" in text


def test_64_concurrent_requests_each_get_their_own_answer(server):
    """Each request's answer alone, then all 64 at once: the same answers, in the same places."""
    urls = _crops(64)
    client = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0, timeout=300)

    async def ask(url):
        out = await client.chat.completions.create(model="emoreason", messages=_user(url), max_tokens=8, temperature=0)
        return out.choices[0].message.content

    async def main():
        alone = [await ask(u) for u in urls]
        together = await asyncio.gather(*[ask(u) for u in urls])
        return alone, together

    alone, together = asyncio.run(main())
    assert len(set(alone)) >= 32  # the answers depend on the image, so a mix-up would show
    assert together == alone


def _post(server, body, key=True, **kwargs):
    headers = {"Authorization": f"Bearer {server['key']}"} if key else {}
    return httpx.post(server["url"] + "/v1/chat/completions", headers=headers, timeout=120, **kwargs,
                      **({"json": body} if body is not None else {}))  # fmt: skip


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code, error
    return error


def test_hostile_requests_get_their_4xx_and_the_server_keeps_serving(server, tmp_path):
    good = {"model": "emoreason", "messages": _user(_crops(1)[0]), "max_tokens": 4}
    # A body over the 2 MB limit, declared or not.
    big = {**good, "messages": _user("data:image/png;base64," + "A" * (3 * 1024 * 1024))}
    _error(_post(server, big), 413, "body_too_large")
    # Corrupt media, an unknown content part, a server-local file, a remote URL.
    corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    assert "image" in _error(_post(server, {**good, "messages": _user(corrupt)}), 400)["message"]
    odd = [{"role": "user", "content": [{"type": "hologram", "hologram": "x"}]}]
    assert "hologram" in _error(_post(server, {**good, "messages": odd}), 400)["message"]
    for url in ("file:///etc/passwd", "/etc/passwd", str(server["allowed"] / ".." / ".." / "etc" / "passwd")):
        _error(_post(server, {**good, "messages": _user(url)}), 403, "media_not_allowed")
    _error(_post(server, {**good, "messages": _user("https://example.com/face.jpg")}), 403, "media_not_allowed")
    # Wrong or missing key; malformed JSON; an unknown model or task; bad sampling.
    _error(httpx.post(server["url"] + "/v1/chat/completions", json=good, headers={"Authorization": "Bearer nope"}),
           401, "invalid_api_key")  # fmt: skip
    _error(_post(server, good, key=False), 401, "invalid_api_key")
    _error(httpx.get(server["url"] + "/v1/models"), 401, "invalid_api_key")
    _error(_post(server, None, content=b'{"model": "emoreason", "messages": ['), 400, "invalid_json")
    _error(_post(server, {**good, "model": "gpt-9"}), 404, "model_not_found")
    _error(_post(server, {**good, "task": "horoscope", "max_tokens": 64}), 400)
    _error(_post(server, {**good, "temperature": -3}), 400)
    _error(_post(server, {**good, "max_tokens": 100000}), 400)
    _error(_post(server, {"model": "emoreason"}), 400)
    # A file under the allowed folder is read.
    Image.fromarray(_astronaut()).save(server["allowed"] / "face.png")
    ok = _post(server, {**good, "messages": _user(str(server["allowed"] / "face.png"))})
    assert ok.status_code == 200, ok.text
    # A client that leaves mid-stream: the server aborts that request and goes on.
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {server['key']}"},
                      json={**good, "stream": True, "max_tokens": 200}) as response:  # fmt: skip
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    deadline = time.time() + 30
    while httpx.get(server["url"] + "/health").json()["active_requests"] and time.time() < deadline:
        time.sleep(0.2)
    assert httpx.get(server["url"] + "/health").json()["active_requests"] == 0
    after = _post(server, good)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]
    assert server["proc"].poll() is None


def test_metrics_count_requests_tokens_and_queue(server, client):
    client.chat.completions.create(model="emoreason", messages=_user(_crops(1)[0]), max_tokens=5, temperature=0)
    text = httpx.get(server["url"] + "/metrics").text
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    assert metrics['emoreason_requests_total{status="200"}'] >= 1
    assert metrics["emoreason_completion_tokens_total"] >= 5
    assert metrics["emoreason_queue_depth"] == 0
    assert metrics["emoreason_request_latency_seconds_count"] >= 1


def test_remote_media_fetched_only_when_allowed(tmp_path):
    """The media policy alone (no engine): a URL on a loopback HTTP server is fetched when remote media are
    allowed, and refused otherwise; a path is read only under an allowed folder, links followed."""
    import http.server
    import threading

    from serve.api import HTTPRefusal, Policy, police_media

    (tmp_path / "face.png").write_bytes(b"\x89PNG fake")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/face.png"
    try:
        fetched = asyncio.run(police_media(_user(url), Policy(allow_remote_media=True)))
        data_url = fetched[0]["content"][0]["image_url"]["url"]
        assert base64.b64decode(data_url.split(",", 1)[1]) == b"\x89PNG fake"
        with pytest.raises(HTTPRefusal, match="remote media"):
            asyncio.run(police_media(_user(url), Policy()))
        with pytest.raises(HTTPRefusal, match="larger than"):
            asyncio.run(police_media(_user(url), Policy(allow_remote_media=True, max_body_bytes=4)))
    finally:
        httpd.shutdown()
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "escape.png").symlink_to("/etc/passwd")
    (inside / "ok.png").write_bytes(b"x")
    access = Policy(allow_media_dirs=(inside,)).access()  # local files: checked by the processor, under any key
    assert access.local(str(inside / "ok.png")) == str((inside / "ok.png").resolve())
    from mllm.parts import MediaNotAllowedError

    for escape in (inside / "escape.png", inside / ".." / "ok.png", "/etc/passwd", "relative.png"):
        with pytest.raises(MediaNotAllowedError, match="not allowed"):
            access.local(str(escape))


def test_a_request_naming_a_task_without_words_is_asked_the_tasks_own_question(client):
    from mllm.output import question

    image = {"type": "image_url", "image_url": {"url": _crops(1)[0]}}
    asked = [
        {"role": "user", "content": [image, {"type": "text", "text": question("expr", label_space("abaw_expr"))}]}
    ]
    bare = [{"role": "user", "content": [image]}]
    answers = [client.chat.completions.create(model="emoreason", messages=m, max_tokens=64, temperature=0,
                                              extra_body={"task": "expr"}) for m in (asked, bare)]  # fmt: skip
    assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    # Without a task nothing is added: the prompt is shorter.
    plain = client.chat.completions.create(model="emoreason", messages=bare, max_tokens=4, temperature=0)
    assert plain.usage.prompt_tokens < answers[1].usage.prompt_tokens


def test_the_served_name_is_the_folder_or_the_run_and_the_flag_sets_another(monkeypatch, tmp_path):
    import argparse

    from serve import api
    from serve.engine import served_name

    assert served_name(tmp_path / "tiny" / "emoreason") == "emoreason"
    assert served_name(tmp_path / "runs" / "grpo-tiny" / "model") == "grpo-tiny"  # training's OUTPUT_DIR/model
    monkeypatch.chdir(tmp_path)
    assert served_name("model") == tmp_path.name  # a relative path is named as the folder it names

    made = {}
    monkeypatch.setattr(api, "Engine", lambda model, adapters, **kw: made.update(model=model, **kw))
    parser = argparse.ArgumentParser()
    api.add_arguments(parser)
    api.engine_from_args(parser.parse_args(["--model", "runs/x/model"]))
    assert made["model"] == "runs/x/model" and made["name"] is None  # the engine names it from the folder
    api.engine_from_args(parser.parse_args(["--model", "runs/x/model", "--served-model-name", "emo-7b"]))
    assert made["name"] == "emo-7b"
