"""Helpers for the bad-input suite: run the CLI as users do and check it failed cleanly, leaving files untouched.

Each case asserts the exit code (or exception type), a one-line message naming the file (and line), no traceback,
and the user's files unchanged (checksums before and after).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `emoreason ARGS...` in this process (as the console script does) and capture its output."""
    from mllm.cli import main

    def run(*argv) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_refused(result: CliResult, *names: str, code: int | None = None) -> str:
    """A clean refusal: non-zero exit, no traceback, one error line on stderr naming each of `names`."""
    assert result.code != 0, f"exit 0; stdout={result.out!r} stderr={result.err!r}"
    if code is not None:
        assert result.code == code, result.err
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err
    lines = [line for line in result.err.splitlines() if "error" in line]
    assert len(lines) == 1, f"expected one error line, got: {result.err!r}"
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


def checksums(root: str | Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) with its sha256, and every folder, to compare before and after."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    result = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        result[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return result
