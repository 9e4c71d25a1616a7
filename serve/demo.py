"""`emoreason demo`: a chat in the browser (Gradio) on the serving engine.

    emoreason demo --model runs/sft/model            # http://127.0.0.1:7860/ ; the API is served beside it, /v1
    emoreason serve --model runs/sft/model --demo    # the API, with the demo at /demo
    make demo                                        # the same on a tiny random checkpoint it builds first

Upload or record a video, a photo or audio, pick the question (expression, AUs, valence/arousal, ambivalence/
hesitancy) and the served model; the reasoning streams into a collapsible message, then the answer shows, beside
the frames the model saw with the face box and 68 landmarks drawn (`serve.overlay`). The demo calls the engine the
endpoint uses, on the same event loop, so its requests are batched with the API's.

Uploads live in Gradio's cache only while needed: files older than `--keep-uploads-s` are deleted. The API key,
when set, is the demo's password (any user name).
"""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

from mllm.output import TASKS

HELP = "Chat demo in the browser (Gradio) on the serving engine, with the API beside it."
TASK_CHOICES = [
    ("Expression", "expr"),
    ("Action units", "au"),
    ("Valence / arousal", "va"),
    ("Ambivalence / hesitancy", "ah"),
]
assert [t for _, t in TASK_CHOICES] == list(TASKS)
TASK_NAMES = {task: name for name, task in TASK_CHOICES}


def _split(text: str) -> tuple[str, str]:
    """(reasoning so far, answer so far) of a partial `<think>…</think><answer>…</answer>` completion."""
    think = text.split("<think>", 1)[-1]
    think, _, rest = think.partition("</think>")
    answer = rest.split("<answer>", 1)[-1].split("</answer>", 1)[0] if "<answer>" in rest else ""
    return think.strip(), answer.strip()


def answer_markdown(parsed: dict) -> str:
    """The parsed result as the demo shows it."""
    if not parsed["ok"]:
        return f"No parsable answer ({parsed['error']}: {parsed['message']})"
    task = parsed["task"]
    if task == "expr":
        text = f"Expression: **{parsed['label']}**"
    elif task == "au":
        text = "Action units: **" + (", ".join(parsed["aus"]) or "none active") + "**"
    elif task == "va":
        text = f"Valence **{parsed['valence']:+.2f}**, arousal **{parsed['arousal']:+.2f}**"
    else:
        text = f"Ambivalence/hesitancy: **{parsed['ambivalence_hesitancy']}**"
    if parsed.get("cited_aus"):
        text += "  \nAUs cited in the reasoning: " + ", ".join(parsed["cited_aus"])
    return text


def build_demo(engine, max_tokens: int = 256, max_file_bytes: int | None = None, keep_uploads_s: int = 600):
    import gradio as gr

    from mllm.predict import build_messages
    from serve.engine import RequestError
    from serve.overlay import frames_used

    async def respond(video, image, audio, task, model, history):
        media = [m for m in (video, image, audio) if m]
        if len(media) != 1:
            raise gr.Error("Give one video, photo or audio recording (the tab you use), then press Analyze.")
        media = media[0]
        history = [*(history or []), {"role": "user", "content": f"{Path(media).name} ({TASK_NAMES[task]})"}]
        thinking = {"role": "assistant", "content": "", "metadata": {"title": "Reasoning", "status": "pending"}}
        history.append(thinking)
        yield history, "…", None
        messages = build_messages(media, task, engine.served[engine.served_name(model)].label_space)
        try:
            embeds = await engine.embed(messages, model)
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
        gr.Markdown("## EmoReason\nA video, photo or recording in; the model's reasoning and its answer out.")
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
        go.click(respond, [video, image, audio, task, model, chat], [chat, answer, overlay], concurrency_limit=None)
    demo.queue(default_concurrency_limit=None)
    demo.max_file_size = max_file_bytes
    return demo


def mount(app, engine, path: str, api_key: str | None, max_tokens: int, max_file_bytes: int):
    import gradio as gr

    demo = build_demo(engine, max_tokens=max_tokens, max_file_bytes=max_file_bytes)
    auth = None
    if api_key:
        auth = lambda _user, password: hmac.compare_digest(password.encode(), api_key.encode())  # noqa: E731
    return gr.mount_gradio_app(app, demo, path=path, auth=auth, max_file_size=max_file_bytes, footer_links=[])


def add_arguments(parser) -> None:
    from serve.api import add_arguments as add_serve_arguments

    add_serve_arguments(parser, port=7860)


def run(args) -> int:
    from serve.api import run as serve_run

    args.demo = True
    args.demo_path = "/"
    return serve_run(args)
