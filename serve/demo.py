"""`emoreason demo`: a chat in the browser (Gradio) on the serving engine.

    emoreason demo --model runs/sft/model            # http://127.0.0.1:7860/ ; the API is served beside it, /v1
    emoreason serve --model runs/sft/model --demo    # the API, with the demo at /demo
    make demo                                        # the same on a tiny random checkpoint it builds first

Upload or record a video, a photo or audio, pick the question (expression, AUs, valence/arousal, ambivalence/
hesitancy) and the served model; the reasoning streams into a collapsible message, then the answer shows, beside
the frames the model saw with the face box and 68 landmarks drawn (`serve.overlay`). The demo calls the engine the
endpoint uses, on the same event loop, so its requests are batched with the API's.

A client names only data it sent: the demo's uploads go to a private folder of this server, and any request to
the demo (the page, or Gradio's HTTP API used directly) that names a file anywhere else, or anything there that is
not a plain file (a FIFO, a link), is refused with 403 before Gradio touches it. The server keeps nothing of a
request: the file analysed is deleted once answered, and whatever else Gradio cached (the overlay shown) within
two minutes. The API key, when set, is the demo's password (any user name).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from pathlib import Path

from serve.demo_common import TASK_CHOICES, TASK_NAMES, answer_markdown, upload_folder, uploaded_file
from serve.errors import error_body


def _split(text: str) -> tuple[str, str]:
    """(reasoning so far, answer so far) of a partial `<think>…</think><answer>…</answer>` completion."""
    think = text.split("<think>", 1)[-1]
    think, _, rest = think.partition("</think>")
    answer = rest.split("<answer>", 1)[-1].split("</answer>", 1)[0] if "<answer>" in rest else ""
    return think.strip(), answer.strip()


def _file_references(value, found: list) -> list:
    """Every `path` a request body names, at any depth (Gradio's FileData, or anything shaped like it). A null path
    names nothing (the camera's frames come inline, as data URLs)."""
    if isinstance(value, dict):
        if value.get("path") is not None:
            found.append(value["path"])
        for item in value.values():
            _file_references(item, found)
    elif isinstance(value, list):
        for item in value:
            _file_references(item, found)
    return found


class UploadsOnly:
    """ASGI middleware in front of the demo: a JSON request naming a file (Gradio's FileData `path`, under any key)
    is refused with 403 unless the file is a plain file uploaded to this server (`uploaded_file`), before Gradio
    copies, serves or opens it (a FIFO would block the server). Bodies are read up to `max_body_bytes`."""

    def __init__(self, app, prefix: str, skip: tuple[str, ...], max_body_bytes: int):
        self.app, self.prefix, self.skip, self.max_body_bytes = app, prefix.rstrip("/"), skip, max_body_bytes

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        ours = scope["type"] == "http" and scope.get("method") == "POST" and path.startswith(self.prefix)
        if not ours or path.startswith(self.skip):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if b"json" not in headers.get(b"content-type", b"") and b"multipart" in headers.get(b"content-type", b""):
            return await self.app(scope, receive, send)  # an upload: Gradio writes it into the upload folder
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _json_reply(send, 413, f"the request is over {self.max_body_bytes} bytes")
        problem = None
        if body.strip()[:1] in (b"{", b"["):
            try:
                references = _file_references(json.loads(body), [])
            except (ValueError, RecursionError):
                references = []  # not JSON Gradio can read either: Gradio answers it
            folder = upload_folder()
            problem = next((p for p in (uploaded_file(r, folder) for r in references) if p), None)
        if problem is not None:
            return await _json_reply(send, 403, f"a file reference {problem}")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _json_reply(send, status: int, message: str) -> None:
    payload = json.dumps({**error_body(message, "file_not_allowed"), "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def build_demo(
    engine,
    max_tokens: int = 256,
    max_file_bytes: int | None = None,
    keep_uploads_s: int = 120,
    access=None,
    live_limits=None,
    live_sessions: dict | None = None,
):
    import gradio as gr

    from mllm.labels import label_space
    from mllm.parts import MediaAccess
    from mllm.predict import build_messages
    from serve.engine import RequestError
    from serve.overlay import frames_used

    folder = upload_folder()
    access = access or MediaAccess()
    # The demo reads only uploads, whatever its callers send (the middleware refuses the rest before Gradio).
    access = MediaAccess(local_dirs=(folder,), max_parts=access.max_parts, max_images=access.max_images)

    async def respond(video, image, audio, task, model, history):
        media = [m for m in (video, image, audio) if m]
        if len(media) != 1:
            raise gr.Error("Give one video, photo or audio recording (the tab you use), then press Analyze.")
        media = media[0]
        problem = uploaded_file(media, folder)
        if problem is not None:
            raise gr.Error(f"The file {problem}.")
        try:
            async for update in _answer(media, task, model, history):
                yield update
        finally:  # the server keeps nothing of a request
            with contextlib.suppress(OSError):
                os.unlink(media)
                os.rmdir(os.path.dirname(media))

    async def _answer(media, task, model, history):
        history = [*(history or []), {"role": "user", "content": f"{Path(media).name} ({TASK_NAMES[task]})"}]
        thinking = {"role": "assistant", "content": "", "metadata": {"title": "Reasoning", "status": "pending"}}
        history.append(thinking)
        yield history, "…", None
        messages = build_messages(media, task, engine.served[engine.served_name(model)].label_space)
        try:
            embeds = await engine.embed(messages, model, access=access)
        except RequestError as exc:
            raise gr.Error(str(exc)) from None
        picture = asyncio.create_task(asyncio.to_thread(frames_used, engine.processor, media))  # a face cache hit
        params = engine.sampling_params(task, max_tokens, model=model)
        text = ""
        async for delta in engine.stream(messages, model=model, task=task, params=params, embeds=embeds):
            text += delta.text
            thinking["content"], answer = _split(text)
            yield history, answer or "…", None
        thinking["metadata"]["status"] = "done"
        parsed = engine.parse(text, task, model)
        shown = answer_markdown(parsed)
        history.append({"role": "assistant", "content": shown})
        try:
            overlay = await picture
        except Exception:  # the picture is a help, never a reason to lose the answer
            overlay = None
        yield history, shown, overlay

    names = engine.model_names()
    with gr.Blocks(title="EmoReason", delete_cache=(keep_uploads_s, keep_uploads_s)) as demo:
        gr.Markdown("## EmoReason\nA video, photo or recording in, or a live camera; the model's reasoning and its "
                    "answer out.")  # fmt: skip
        with gr.Tab("Analyze a file", elem_id="tab-file"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Tab("Video"):
                        video = gr.Video(sources=["upload", "webcam"], label="Video", elem_id="video-input")
                    with gr.Tab("Photo"):
                        image = gr.Image(sources=["upload", "webcam"], type="filepath", label="Photo")
                    with gr.Tab("Audio"):
                        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
                    task = gr.Radio(TASK_CHOICES, value="expr", label="Question")
                    model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1)
                    go = gr.Button("Analyze", variant="primary", elem_id="analyze")
                with gr.Column(scale=2):
                    chat = gr.Chatbot(label="Conversation", elem_id="chat", height=420)
                    answer = gr.Markdown("", elem_id="answer")
                    overlay = gr.Image(label="Frames used (face box, landmarks, regions)", elem_id="overlay",
                                       interactive=False)  # fmt: skip
            go.click(respond, [video, image, audio, task, model, chat], [chat, answer, overlay],
                     concurrency_limit=None)  # fmt: skip
        with gr.Tab("Live", elem_id="tab-live"):
            from serve.live_api import LiveLimits
            from serve.live_demo import add_live_tab

            labels_of = lambda name: label_space(engine.served_label_space(name))  # noqa: E731
            _, end_live = add_live_tab(engine, names, labels_of, live_limits or LiveLimits(), live_sessions, folder)
        demo.unload(end_live)
    demo.queue(default_concurrency_limit=None)
    demo.max_file_size = max_file_bytes
    return demo


def private_upload_folder() -> Path:
    """A folder of this server's own for the demo's uploads (unless the operator set GRADIO_TEMP_DIR): the shared
    default holds other Gradio apps' files. Removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    from mllm.outputs import pid_alive

    if not os.environ.get("GRADIO_TEMP_DIR"):
        prefix = "emoreason-demo-uploads-"
        for stale in Path(tempfile.gettempdir()).glob(prefix + "*"):  # left by servers that were killed
            pid = stale.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)) and stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
        os.environ["GRADIO_TEMP_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)
    return upload_folder()


def mount(app, engine, path: str, api_key: str | None, max_tokens: int, max_file_bytes: int, access=None):
    import gradio as gr

    private_upload_folder()
    demo = build_demo(engine, max_tokens=max_tokens, max_file_bytes=max_file_bytes, access=access,
                      live_limits=getattr(app.state, "live_limits", None),
                      live_sessions=getattr(app.state, "live_sessions", None))  # fmt: skip
    auth = None
    if api_key:
        auth = lambda _user, password: hmac.compare_digest(password.encode(), api_key.encode())  # noqa: E731
    app = gr.mount_gradio_app(app, demo, path=path, auth=auth, max_file_size=max_file_bytes, footer_links=[])
    skip = ("/v1/", "/health", "/metrics") if path in ("", "/") else ()
    app.add_middleware(UploadsOnly, prefix=path if path != "/" else "", skip=skip or ("/v1/",),
                       max_body_bytes=max_file_bytes)  # fmt: skip
    return app
