"""What a command that starts the engine shows while it starts: one status line per phase, and nothing else.

    with StartupLog("serve", verbose=args.verbose) as log:
        log.phase("loading the model")          # emoreason serve: [  0.0 s] loading the model
        engine = Engine(..., status=log.phase)
        ...
        log.phase(f"ready: {url}")

Without `--verbose`, everything the libraries print (vLLM's log, its subprocesses', C libraries' warnings, Python
warnings, progress bars) goes to a log file under `$EMOREASON_CACHE/logs/`, named on the first status line; this
process's own `sys.stdout` (results) and `sys.stderr` (status lines, one-line errors) still reach the terminal.
The redirection lasts until the process exits, so warnings printed while it exits (vLLM's shared-memory tracker)
go to the log too. With `--verbose`, everything goes to the terminal as it did.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

KEEP_LOGS = 20  # the newest logs kept; older ones are removed when a command starts


def log_dir() -> Path:
    root = os.environ.get("EMOREASON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "emoreason")
    return Path(root) / "logs"


class StartupLog:
    def __init__(self, command: str, verbose: bool = False):
        self.command, self.verbose = command, verbose
        self.started = time.monotonic()
        self.path: Path | None = None

    def start(self) -> StartupLog:
        """Send the libraries' output to the log (unless verbose) until the process exits. Only a process whose
        streams are still its own descriptors 1 and 2 (the console script) is redirected: a caller that replaced
        them (a test capturing output, a notebook) keeps what it set up."""
        if not self.verbose and sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
            self._redirect()
        return self

    __enter__ = start

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    def _redirect(self) -> None:
        folder = log_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in sorted(folder.glob("*.log"), key=lambda f: f.stat().st_mtime)[:-KEEP_LOGS]:
                old.unlink(missing_ok=True)  # the folder holds only these logs, written by this module
            self.path = folder / f"{self.command.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            self.path = None  # no writable log folder: the libraries' output stays on the terminal
            return
        sys.stdout.flush()
        sys.stderr.flush()
        terminal_out, terminal_err = os.dup(1), os.dup(2)
        # Descriptors 1 and 2 (C libraries, and every subprocess, which inherits them) now write to the log ...
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # ... and this process's own streams to the terminal.
        sys.stdout = open(terminal_out, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(terminal_err, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        # Libraries that write to Python's streams are sent to the log: vLLM's logger, warnings, progress bars.
        os.environ["VLLM_LOGGING_STREAM"] = "ext://sys.__stdout__"
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import logging
        import warnings

        # Records logged before a library configures its logger (vLLM's Triton notice) go to the log too.
        logging.lastResort = logging.StreamHandler(sys.__stderr__)
        logging.lastResort.setLevel(logging.WARNING)
        # torch's standard build, on a machine with a CUDA toolkit but no GPU, notes "No CUDA runtime is found" when
        # vLLM imports its extension builder, through a handler torch made on this process's stderr: noise on CPU.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

        def to_log(message, category, filename, lineno, file=None, line=None):
            sys.__stderr__.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = to_log
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass

    def phase(self, text: str) -> None:
        """One status line: `emoreason CMD: [ 12.3 s] text` (the first one also names the log file)."""
        elapsed = time.monotonic() - self.started
        where = ""
        if self.path is not None and not getattr(self, "_named", False):
            self._named = True
            where = f" (libraries' log: {self.path}; --verbose shows it here)"
        print(f"emoreason {self.command}: [{elapsed:5.1f} s] {text}{where}", file=sys.stderr, flush=True)
