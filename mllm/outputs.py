"""Where commands may write, and how: the user's files are never deleted or overwritten.

    out = claim_output_dir("runs/faces", protect=[media_path])   # refuses before any work starts
    atomic_write_text(out / "landmarks.json", text)               # temp name beside it, then rename
    with atomic_dir(out / "dataset") as tmp:                      # a whole folder, renamed into place
        dataset.save_to_disk(tmp)

    path = claim_output_file("runs/sub.csv", protect=[sample])   # a single file the user names
    write_output_file(path, text)                                 # atomic, and recorded as ours

Rules (README, "Bad input and limits"):
- A command writes only into a folder that is new, empty, or marked by `MARKER` as written by this tool before,
  for the same kind of output (a training run never goes into a dataset folder). A folder of anything else, an
  existing file, or a folder that is (or contains) one of the command's inputs is refused with
  `OutputRefusedError` naming it. Paths are compared with links followed.
- A single output file (`claim_output_file`) may be new, or a file this tool wrote there and nobody changed since
  (its digest is in `LEDGER` beside it); never one of the inputs, nor a file inside an input folder.
- Every file and folder is written under a temporary name beside its final name (`.NAME.emoreason-tmp-PID-...`)
  and renamed into place, so a killed run leaves the previous output intact.
- Leftover temporaries of killed runs (their PID no longer alive) are removed by the next run that claims the
  folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".emoreason-output"
LEDGER = ".emoreason-files.json"  # beside single output files: name -> sha256 of what this tool wrote
TMP_TAG = ".emoreason-tmp-"
_TMP_PATTERN = re.compile(r"^\..+\.emoreason-tmp-(\d+)-")


class OutputRefusedError(ValueError):
    """An output location that would destroy or mix with the user's files; refused before any work starts."""


def _resolved(path: str | os.PathLike) -> Path:
    """The path with links followed (`out -> dataset/` is the dataset folder), so inputs are recognised."""
    return Path(os.path.expanduser(path)).resolve()


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_litter(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries left in `folder` by killed runs of this tool (their process is gone). Returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP_PATTERN.match(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        # Killed between atomic_dir's two renames: the previous version is put back, not thrown away.
        final = folder / match.group(0)[1 : -len(match.group(1)) - len(TMP_TAG) - 1]
        previous = entry / "previous"
        if "-old-" in entry.name and previous.exists() and not final.exists():
            os.replace(previous, final)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _make_folder(folder: Path, path, what: str) -> None:
    """Create `folder` (and its missing parents), or refuse when the nearest existing one is a file or read-only."""
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputRefusedError(f"{path}: {what} cannot be created under {parent}, which is not a folder")
    _check_writable(parent, f"{what}'s folder {parent}")
    folder.mkdir(parents=True, exist_ok=True)


def _check_writable(folder: Path, what: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputRefusedError(f"{folder}: {what} is not writable")


def _small_text(path: Path, limit: int = 1 << 20) -> str | None:
    """A marker or ledger of ours: a regular file of at most `limit` bytes (anything else planted there is
    ignored, never read whole)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO planted there does not block the open
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(limit + 1)
    return data.decode("utf-8", errors="replace") if len(data) <= limit else None


def marker_kind(folder: Path) -> str | None:
    """The kind of output an emoreason folder holds ("dataset", "train-run", ...); None for markers written before
    kinds were recorded."""
    text = _small_text(folder / MARKER)
    if text is None:
        return None
    return next((line[5:].strip() for line in text.splitlines() if line.startswith("kind:")), None)


def claim_output_dir(
    path: str | os.PathLike, protect: Iterable[str | os.PathLike] = (), what: str = "--out", kind: str | None = None
) -> Path:
    """Make `path` this tool's output folder, or refuse (`OutputRefusedError`) before any work starts.

    Accepted: a path that does not exist (created with its parents), an empty folder, or a folder holding
    `MARKER` (output this tool wrote before) of the same `kind`. Refused: an existing file, a folder of other files,
    a folder of another kind of our output, and any folder that is one of `protect` (the command's inputs), inside
    one, or contains one, links followed. Leftovers of killed runs in the folder are removed. The marker (with the
    kind) is written before returning."""
    out = _resolved(path)
    for item in protect:
        guarded = _resolved(item)
        if _is_within(out, guarded) and guarded.is_dir():
            raise OutputRefusedError(f"{path}: {what} is inside the input folder {item}; choose a separate folder")
        if _is_within(guarded, out):
            raise OutputRefusedError(f"{path}: {what} contains the input {item}; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise OutputRefusedError(f"{path}: {what} exists and is not a folder")
    if out.is_dir():
        _check_writable(out, what)
        clean_litter(out)
        entries = [e.name for e in out.iterdir()]
        if entries and MARKER not in entries:
            raise OutputRefusedError(
                f"{path}: {what} is a folder of other files (not written by emoreason); choose a new or empty folder"
            )
        found = marker_kind(out) if entries else None
        if kind is not None and found is not None and found != kind:
            raise OutputRefusedError(
                f"{path}: {what} holds another kind of emoreason output ({found}, not {kind}); choose a new folder"
            )
    else:
        _make_folder(out, path, what)
    marker = out / MARKER
    if not marker.exists():
        atomic_write_text(
            marker, "This folder holds output written by emoreason.\n" + (f"kind: {kind}\n" if kind else "")
        )
    return out


def _ledger(folder: Path) -> dict:
    import json

    try:
        data = json.loads(_small_text(folder / LEDGER) or "{}")
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_output_file(path: str | os.PathLike, protect: Iterable[str | os.PathLike] = (), what: str = "--out") -> Path:
    """A single output file the user named, or refuse (`OutputRefusedError`) before any work starts.

    Accepted: a path that does not exist (its folder is created), or a regular file this tool wrote there and
    nobody changed since (`LEDGER`). Refused: a folder, a FIFO or device, any other existing file, one of
    `protect` (the command's inputs) or a file inside an input folder, links followed. Write it with
    `write_output_file`."""
    out = _resolved(path)
    for item in protect:
        guarded = _resolved(item)
        if out == guarded:
            raise OutputRefusedError(f"{path}: {what} is the input {item}; choose another file")
        if guarded.is_dir() and _is_within(out, guarded):
            raise OutputRefusedError(f"{path}: {what} is inside the input folder {item}; choose another folder")
    if out.exists() or out.is_symlink():
        import stat

        mode = out.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputRefusedError(f"{path}: {what} is a folder; name a file")
        if not stat.S_ISREG(mode):
            raise OutputRefusedError(f"{path}: {what} exists and is not a regular file")
        if _ledger(out.parent).get(out.name) != _digest(out):
            raise OutputRefusedError(
                f"{path}: {what} exists and was not written by emoreason (or was changed since); choose a new name"
            )
        _check_writable(out.parent, f"{what}'s folder {out.parent}")
        return out
    _make_folder(out.parent, path, what)
    return out


@contextlib.contextmanager
def output_file(final: str | os.PathLike) -> Iterator[Path]:
    """`atomic_path` for a file claimed with `claim_output_file`: once renamed into place, its digest is recorded
    in the folder's `LEDGER`, so a later run may replace it (and only it, while unchanged)."""
    import json

    final = Path(final)
    with atomic_path(final) as tmp:
        yield tmp
        digest = _digest(tmp)
    ledger = {**_ledger(final.parent), final.name: digest}
    atomic_write_text(final.parent / LEDGER, json.dumps(ledger, indent=1, sort_keys=True) + "\n")


def write_output_file(final: str | os.PathLike, data: str | bytes) -> None:
    with output_file(final) as tmp:
        Path(tmp).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_name(final: Path) -> str:
    return f".{final.name}{TMP_TAG}{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `final`; on success it is renamed to `final`, on error removed."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_name(final), dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions of any new file
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` (whose previous version, if
    any, is removed only after the new one is in place), on error it is removed. `final` must be a path this tool
    owns (inside a claimed output folder)."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(final), dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_name(final) + "old-", dir=final.parent))
            os.replace(final, old / "previous")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
