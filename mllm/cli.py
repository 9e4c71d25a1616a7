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
    "make-tiny": "mllm.samples.tiny",
    "export": "mllm.export",
    "data": "data_builders.cli",
    "compose": "mllm.compose",
    "train": "train.cli",
    "serve": "serve.api",
    "analyze": "serve.analyze",
    "watch": "serve.watch",
    "demo": "serve.demo_command",
    "eval": "eval.cli",
}


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, with a non-zero exit and no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoreason",
        description="EmoReason: multimodal-LLM emotion reasoning from raw video, audio and images.",
    )
    verbose_help = "show the traceback of an error, not just one line"
    parser.add_argument("--verbose", dest="verbose_top", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        if not any("--verbose" in action.option_strings for action in p._actions):
            p.add_argument("--verbose", action="store_true", help=verbose_help)
        p.set_defaults(_run=module.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every failure is one line on stderr and a non-zero exit; `--verbose` adds the traceback.
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"emoreason {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose or args.verbose_top:
            import traceback

            traceback.print_exc()
        from mllm.media import MediaError

        expected = isinstance(exc, UserError | MediaError | OSError | ValueError | LookupError)
        kind = "error" if expected else f"internal error ({type(exc).__name__}; --verbose shows where)"
        print(f"emoreason {args.command}: {kind}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
