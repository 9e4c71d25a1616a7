"""`emoreason demo`: `emoreason serve` with the chat demo (`serve.demo`) at / and the API beside it, at /v1.

    emoreason demo --model runs/sft/model            # http://127.0.0.1:7860/

It takes `emoreason serve`'s options (`serve.api.add_arguments`), its port defaulting to 7860.
"""

from __future__ import annotations

HELP = "Chat demo in the browser (Gradio) on the serving engine, with the API beside it."


def add_arguments(parser) -> None:
    from serve.api import add_arguments as add_serve_arguments

    add_serve_arguments(parser, port=7860)


def run(args) -> int:
    from serve.api import run as serve_run

    args.demo = True
    args.demo_path = "/"
    return serve_run(args)
