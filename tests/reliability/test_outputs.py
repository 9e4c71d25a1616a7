"""`mllm.outputs`: where commands may write, atomic writes, and the clean-up of killed runs' leftovers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mllm.outputs import MARKER, OutputRefusedError, atomic_dir, atomic_write_text, claim_output_dir, clean_litter
from tests.reliability.conftest import checksums


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    out = claim_output_dir(tmp_path / "a" / "b")
    assert (out / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert (claim_output_dir(tmp_path / "empty") / MARKER).is_file()
    assert claim_output_dir(out) == out  # our own output again: accepted


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: (p / "user").mkdir() or (p / "user" / "thesis.tex").write_text("x"), "other files"),
        (lambda p: (p / "user").write_text("a file"), "not a folder"),
    ],
)
def test_user_files_are_refused_and_untouched(tmp_path, make, expected):
    make(tmp_path)
    before = checksums(tmp_path)
    with pytest.raises(OutputRefusedError, match=expected):
        claim_output_dir(tmp_path / "user")
    assert checksums(tmp_path) == before


def test_inputs_are_protected(tmp_path):
    root = tmp_path / "dataset"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"1")
    before = checksums(tmp_path)
    for out in (root, tmp_path, root / "videos", root / "new"):
        with pytest.raises(OutputRefusedError, match="input"):
            claim_output_dir(out, protect=[root])
    assert checksums(tmp_path) == before


def test_unwritable_parent_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(OutputRefusedError, match="not writable"):
        claim_output_dir(locked / "out")


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = claim_output_dir(tmp_path / "out")
    with atomic_dir(out / "data") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out / "data") as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("killed")
    assert (out / "data" / "v").read_text() == "1"
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "data"])


def test_litter_of_a_killed_run_is_removed_and_a_half_swapped_folder_restored(tmp_path):
    out = claim_output_dir(tmp_path / "out")
    script = (
        "import os, sys\n"
        "from mllm.outputs import atomic_dir, atomic_write_text\n"
        f"with atomic_dir({str(out / 'data')!r}) as t:\n"
        "    (t / 'half').write_text('x')\n"
        "    os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    atomic_write_text(out / "data.json", "{}")
    assert any(".emoreason-tmp-" in p.name for p in out.iterdir())
    # A previous version moved aside by a run killed between atomic_dir's two renames.
    dead_pid = 2**22 + 11
    aside = out / f".data.emoreason-tmp-{dead_pid}-old-x"
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "v").write_text("1")
    removed = clean_litter(out)
    assert removed
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "data", "data.json"])
    assert (out / "data" / "v").read_text() == "1"


def test_outputs_get_ordinary_permissions(tmp_path):
    out = claim_output_dir(tmp_path / "out")
    atomic_write_text(out / "a.json", "{}")
    with atomic_dir(out / "d") as tmp:
        (tmp / "x").write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (out / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_planted_markers_and_ledgers_are_never_read_whole_or_blocked_on(tmp_path):
    from mllm.outputs import LEDGER, claim_output_file, marker_kind

    out = claim_output_dir(tmp_path / "run", kind="eval-run")
    (out / MARKER).unlink()
    os.mkfifo(out / MARKER)  # a FIFO would block a plain open()
    assert marker_kind(out) is None
    (tmp_path / "files").mkdir()
    with open(tmp_path / "files" / LEDGER, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # 64 MB (sparse): over the bound, ignored
    (tmp_path / "files" / "sub.csv").write_text("a,b\n")
    with pytest.raises(OutputRefusedError, match="not written by emoreason"):
        claim_output_file(tmp_path / "files" / "sub.csv")


def test_a_folder_of_another_kind_of_output_is_refused(tmp_path):
    claim_output_dir(tmp_path / "data", kind="dataset")
    with pytest.raises(OutputRefusedError, match="another kind"):
        claim_output_dir(tmp_path / "data", kind="train-run")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(OutputRefusedError, match="another kind"):
        claim_output_dir(tmp_path / "link", kind="eval-run")
    assert claim_output_dir(tmp_path / "data", kind="dataset") == (tmp_path / "data").resolve()


def test_a_single_output_file_is_replaced_only_while_it_is_ours_and_unchanged(tmp_path):
    from mllm.outputs import claim_output_file, write_output_file

    user = tmp_path / "user.csv"
    user.write_text("theirs\n")
    for target, protect in ((user, ()), (tmp_path / "in.csv", [tmp_path / "in.csv"])):
        with pytest.raises(OutputRefusedError):
            claim_output_file(target, protect=protect)
    with pytest.raises(OutputRefusedError, match="inside the input folder"):
        claim_output_file(tmp_path / "data" / "new.csv", protect=[tmp_path])
    ours = claim_output_file(tmp_path / "out" / "sub.csv")
    write_output_file(ours, "a\n")
    write_output_file(claim_output_file(ours), "b\n")  # ours and unchanged: replaced
    ours.write_text("edited by hand\n")
    with pytest.raises(OutputRefusedError, match="changed since"):
        claim_output_file(ours)
    assert user.read_text() == "theirs\n" and ours.read_text() == "edited by hand\n"
