"""The run folder, OUTPUT_DIR: claimed before anything loads, checked before anything in it is replaced, taken back
when a run fails before it wrote anything resumable.

    resume_from = claim_run_dir(recipe, protect=[recipe.model, recipe.data])   # None, or the checkpoint to resume
    with taken_back_on_failure(recipe.output_dir):                             # new or empty before: left so
        ...

The layout is in train/model.py. A checkpoint counts once `COMPLETE` is in it; `--resume` takes the last such one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

COMPLETE = ".emoreason-complete"


def claim_run_dir(recipe, protect) -> str | None:
    """Claim `output_dir` (new, empty, or a run of ours) and return the checkpoint to resume from. A folder that
    already holds checkpoints is refused without `--resume`, so a finished or interrupted run is never overwritten;
    a checkpoint left half-written by a kill is removed (it was ours, and it is not usable). Everything is checked
    before anything is written: a folder of another kind of emoreason output (a dataset, an export), a checkpoint
    past `max_steps`, and files of the user's in `model/` (which a resumed run replaces) are refused."""
    from mllm.outputs import claim_output_dir, clean_litter

    main_process = int(os.environ.get("RANK") or 0) == 0
    if main_process:
        _refuse_other_output(recipe.output_dir)
        if recipe.resume:
            _check_resumable(Path(recipe.output_dir).expanduser().resolve(), recipe)
        out = claim_output_dir(recipe.output_dir, protect=protect, what="--output_dir", kind="train-run")
        clean_litter(out)
        _mark_kind(out)
    else:
        # Under `accelerate launch`/torchrun only the main process claims and tidies the folder: two processes
        # claiming at once would each see the other's half-written marker as somebody else's file.
        out = _wait_for_claim(Path(recipe.output_dir))
    checkpoints = _checkpoints(out)
    complete = [p for p in checkpoints if (p / COMPLETE).exists()]
    if not recipe.resume:
        if checkpoints or (out / "model").exists():
            raise ValueError(
                f"{out}: holds a training run already; pass --resume to continue it, or choose a new --output_dir"
            )
        return None
    for partial in checkpoints:
        if not (partial / COMPLETE).exists() and main_process:
            shutil.rmtree(partial, ignore_errors=True)
    if not complete:
        print(f"{out}: no complete checkpoint to resume from; starting from step 0", flush=True)
        return None
    return str(complete[-1])


def _checkpoints(out: Path) -> list[Path]:
    return sorted(
        (p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )


# Besides checkpoint-N, the marker and leftovers of killed writes:
RUN_ENTRIES = ("model", "runs", "rollouts", "README.md")


def _refuse_other_output(output_dir: str) -> None:
    """A folder marked by an emoreason that did not yet record kinds (`kind:` absent) is taken as a training run
    only if it holds nothing a run does not write: an old dataset or export folder is never trained into."""
    from mllm.outputs import MARKER, TMP_TAG, OutputRefusedError, marker_kind

    out = Path(output_dir).expanduser().resolve()
    if not (out / MARKER).is_file() or marker_kind(out) is not None:
        return  # claim_output_dir judges the rest (and kinds)
    foreign = sorted(
        e.name
        for e in out.iterdir()
        if e.name != MARKER
        and TMP_TAG not in e.name
        and e.name not in RUN_ENTRIES
        and not (e.name.startswith("checkpoint-") and e.is_dir())
    )
    if foreign:
        raise OutputRefusedError(
            f"{output_dir}: --output_dir holds emoreason output that is not a training run ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose a new folder"
        )


def _mark_kind(out: Path) -> None:
    """An old marker without a kind becomes a training run's, now that the folder has been judged one."""
    from mllm.outputs import MARKER, atomic_write_text, marker_kind

    if marker_kind(out) is None:
        atomic_write_text(out / MARKER, "This folder holds output written by emoreason.\nkind: train-run\n")


def _check_resumable(out: Path, recipe) -> None:
    """Before `--resume` loads anything: the last complete checkpoint is not past `max_steps` (it would end "at step
    8 of 4"), and `model/`, which the resumed run replaces, holds nothing of the user's."""
    from mllm.outputs import OutputRefusedError
    from train.final_model import files_not_ours

    if not out.is_dir():
        return
    complete = [p for p in _checkpoints(out) if (p / COMPLETE).exists()]
    if complete and recipe.max_steps > 0:
        step = int(complete[-1].name.split("-")[-1])
        if step > recipe.max_steps:
            raise ValueError(
                f"{complete[-1]}: is at step {step}, past max_steps {recipe.max_steps}; pass a larger --max_steps to "
                "continue the run, or choose a new --output_dir"
            )
    final = out / "model"
    if final.is_dir():
        foreign = files_not_ours(final)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise OutputRefusedError(
                f"{final / foreign[0]}: not written by emoreason, or changed since{more}; --resume replaces {final} "
                "as a whole: move it out first"
            )


def _wait_for_claim(out: Path, timeout_s: float = 600.0) -> Path:
    """The run folder once the main process has claimed it (its marker is there). If the main process refused the
    folder it exits, and the launcher stops this process too; the timeout only bounds a launcher that does not."""
    import time

    from mllm.outputs import MARKER

    deadline = time.monotonic() + timeout_s
    while not (out / MARKER).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{out}: the main process did not claim --output_dir within {timeout_s:.0f} s")
        time.sleep(0.1)
    return out.resolve()


@contextlib.contextmanager
def taken_back_on_failure(output_dir: str):
    """A run that fails (or is interrupted) before it wrote anything resumable leaves `output_dir` as it found it,
    when it was new or empty: whatever the trainer's set-up wrote there (the marker, TensorBoard logs) is removed."""
    out = Path(output_dir).expanduser().resolve()
    created = []
    missing = out
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    was_empty = out.is_dir() and not any(out.iterdir())
    try:
        yield
    except BaseException:
        resumable = out.is_dir() and (_checkpoints(out) or (out / "model").exists())
        if (created or was_empty) and out.is_dir() and not resumable and int(os.environ.get("RANK") or 0) == 0:
            for entry in list(out.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
