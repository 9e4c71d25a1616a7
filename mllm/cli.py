"""The `emoreason` console script: one entry point, one subcommand per job.

    emoreason --help
    emoreason doctor
    emoreason faces clip.mp4 --frames 16 --out faces/

Subcommands are registered as lazy "module" strings (each module defines HELP, add_arguments(parser) and
run(args) -> exit code), so `emoreason --help` imports no heavy library.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, str] = {
    "doctor": "mllm.doctor",
    "faces": "mllm.face.cli",
    "make-tiny": "mllm.tiny",
    "export": "mllm.export",
    "predict": "mllm.predict",
    "data": "data_builders.cli",
}


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, with a non-zero exit and no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoreason",
        description="EmoReason: multimodal-LLM emotion reasoning from raw video, audio and images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mllm.media import MediaError

    try:
        return int(args._run(args) or 0)
    except (UserError, MediaError, FileNotFoundError, ValueError) as exc:
        print(f"emoreason {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"emoreason {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
