"""`emoreason data build` on bad input: refused before any work with one line naming the file (and line), no
traceback, the user's files unchanged; `--skip-bad` counts and lists per-line problems; a killed build leaves the
previous dataset intact and its litter is removed by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm.outputs import MARKER, TMP_TAG
from tests.data_builders import layouts
from tests.reliability.conftest import assert_refused, checksums

REPO = Path(__file__).resolve().parents[2]
TREES = {
    "abaw": lambda root: layouts.abaw_mtl(layouts.abaw_tree(root)),
    "bah": layouts.bah_tree,
    "rafdb": layouts.rafdb_tree,
    "affectnet": layouts.affectnet_tree,
    "dfew": layouts.dfew_tree,
    "mafw": layouts.mafw_tree,
}
ABAW = "6th_ABAW_Annotations"
EXPR = f"{ABAW}/EXPR_Recognition_Challenge/Train_Set"
VA = f"{ABAW}/VA_Estimation_Challenge/Train_Set/vidA.txt"
AU = f"{ABAW}/AU_Detection_Challenge/Train_Set/vidC_left.txt"
MTL = "MTL/training_set_annotations.txt"
RAFDB = "EmoLabel/list_patition_label.txt"
DFEW_TRAIN = "EmoLabel_DataSplit/train(single-labeled)/set_1.csv"
DFEW_TEST = "EmoLabel_DataSplit/test(single-labeled)/set_1.csv"
AFFECTNET = "Manually_Annotated_file_lists"
MAFW = "Train & Test Set/single/no_caption/set_1/train.txt"


def set_line(path: Path, line_no: int, text: str | bytes) -> None:
    lines = path.read_bytes().splitlines()
    lines[line_no - 1] = text.encode() if isinstance(text, str) else text
    path.write_bytes(b"\n".join(lines) + b"\n")


def insert_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines.insert(line_no - 1, text)
    path.write_text("\n".join(lines) + "\n")


def append(path: Path, content: str | bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(content.encode() if isinstance(content, str) else content)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def expect(names: list[str], *_edits, args=()) -> tuple[list, list[str]]:
    """(extra CLI args, what the error line must name); `_edits` are the file edits, made as this is called."""
    return list(args), names


def openface_dir(tmp: Path, active=("AU6", "AU12")) -> Path:
    layouts.openface_csv(tmp / "openface" / "00001.csv", 30, active=active)
    return tmp / "openface"


def mtl_row(frame: str, expression: int = 5) -> str:
    aus = ",".join("1" if au in ("AU1", "AU4", "AU15") else "0" for au in layouts.ABAW_AUS)
    return f"vidM/{frame},-0.4,0.1,{expression},{aus}\n"


def _out_unrelated(root, tmp):
    write(tmp / "thesis" / "chapter1.tex", "my thesis")
    return ["--out", tmp / "thesis"], ["thesis", "other files"]


def _out_symlink(root, tmp):
    (tmp / "link").symlink_to(root / "videos")
    return ["--out", tmp / "link"], ["link", str(root)]


def _out_unwritable(root, tmp):
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o500)
    return ["--out", tmp / "locked" / "out"], ["locked", "not writable"]


# (dataset, make the bad input: (root, tmp) -> (extra CLI args, names the error line must hold))
CASES = [
    # --- where the output goes: refused before any work, nothing of the user's touched
    pytest.param("abaw", lambda r, t: (["--out", r], [str(r)]), id="out-is-root"),
    pytest.param("abaw", lambda r, t: (["--out", r.parent], [str(r)]), id="out-is-roots-parent"),
    pytest.param("abaw", lambda r, t: (["--out", r / "built"], [str(r)]), id="out-inside-root"),
    pytest.param("abaw", _out_unrelated, id="out-is-a-folder-of-other-files"),
    pytest.param("abaw", lambda r, t: (["--out", write(t / "notes.txt", "x")], ["notes.txt"]), id="out-is-a-file"),
    pytest.param("abaw", lambda r, t: (["--out", write(t / "f.txt", "x") / "sub"], ["f.txt"]), id="out-under-a-file"),
    pytest.param("abaw", _out_symlink, id="out-is-a-link-into-root"),
    pytest.param(
        "dfew",
        lambda r, t: (["--openface", openface_dir(t), "--out", t / "openface"], ["openface"]),
        id="out-is-the-openface-folder",
    ),
    pytest.param(
        "dfew",
        lambda r, t: (["--openface", openface_dir(t), "--out", t / "openface" / "o"], ["openface"]),
        id="out-inside-the-openface-folder",
    ),
    pytest.param(
        "abaw",
        _out_unwritable,
        id="out-parent-unwritable",
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere"),
    ),
    pytest.param("abaw", lambda r, t: (["--root", t / "nowhere"], ["nowhere"]), id="root-missing"),
    pytest.param("dfew", lambda r, t: (["--openface", t / "no-of"], ["no-of", "--openface"]), id="openface-missing"),
    pytest.param("dfew", lambda r, t: (["--openface", write(t / "of.csv", "x")], ["of.csv"]), id="openface-is-a-file"),
    pytest.param("rafdb", lambda r, t: expect(["--task", "rafdb"], args=["--task", "au"]), id="task-not-offered"),
    pytest.param(
        "abaw",
        lambda r, t: expect(["--split tset"], args=["--split", "train", "--split", "tset"]),
        id="split-name-typo-builds-nothing-for-it",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(
            ["two EXPR annotation folders", "5th_ABAW"],
            write(r / "5th_ABAW" / "EXPR_Classification_Challenge" / "Train_Set" / "vidZ.txt", "1\n"),
        ),
        id="abaw-two-annotation-editions",
    ),
    # --- silently wrong results, now refused with file:line
    pytest.param(
        "abaw",
        lambda r, t: expect(["vidA.txt:11"], insert_line(r / EXPR / "vidA.txt", 11, "")),
        id="abaw-blank-line-inside",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(["vidA.txt:4"], insert_line(r / EXPR / "vidA.txt", 4, "   ")),
        id="abaw-whitespace-line-inside",
    ),
    pytest.param("abaw", lambda r, t: expect(["vidA.txt:3"], set_line(r / VA, 3, "nan,0.2")), id="abaw-va-nan"),
    pytest.param("abaw", lambda r, t: expect(["vidA.txt:6"], set_line(r / VA, 6, "0.1,inf")), id="abaw-va-inf"),
    pytest.param(
        "abaw", lambda r, t: expect(["vidE.txt", "empty"], write(r / EXPR / "vidE.txt", "")), id="abaw-empty"
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(["vidH.txt", "header"], write(r / EXPR / "vidH.txt", layouts.EXPR_HEADER + "\n")),
        id="abaw-header-only",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(["vidA.txt:5", "UTF-8"], set_line(r / EXPR / "vidA.txt", 5, b"\xff\xfe")),
        id="abaw-line-not-utf8",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(
            ["vidC_left.txt:1", "header"],
            set_line(r / AU, 1, "AU2,AU1," + ",".join(layouts.ABAW_AUS[2:])),
            args=["--skip-bad"],
        ),
        id="abaw-au-header-swapped-even-with-skip-bad",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(
            ["training_set_annotations.txt:1", "header"],
            set_line(r / MTL, 1, "image,valence,arousal,expression,AU2,AU1," + ",".join(layouts.ABAW_AUS[2:])),
        ),
        id="mtl-header-swapped-in-a-later-column",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(["training_set_annotations.txt:12", "line 4"], append(r / MTL, mtl_row("00003.jpg", 4))),
        id="mtl-same-frame-conflicting-labels",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(
            ["training_set_annotations.txt:12", "last crop"], append(r / MTL, mtl_row("99999999.jpg"))
        ),
        id="mtl-frame-number-typo",
    ),
    pytest.param(
        "abaw",
        lambda r, t: expect(["training_set_annotations.txt:12"], append(r / MTL, mtl_row("00000.jpg"))),
        id="mtl-frame-zero",
    ),
    pytest.param(
        "rafdb",
        lambda r, t: expect([f"{RAFDB}:5", "line 1"], append(r / RAFDB, "train_00001.jpg 5\n")),
        id="rafdb-duplicate-conflicting-labels",
    ),
    pytest.param("rafdb", lambda r, t: expect([RAFDB, "empty"], write(r / RAFDB, "")), id="rafdb-empty-list"),
    pytest.param(
        "rafdb",
        lambda r, t: expect([f"{RAFDB}:5", "UTF-8"], append(r / RAFDB, b"train_caf\xe9.jpg 4\n")),
        id="rafdb-line-not-utf8",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect([f"{DFEW_TRAIN}:4", "line 2"], append(r / DFEW_TRAIN, "00001,2\n")),
        id="dfew-duplicate-conflicting-labels",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect(
            [f"{DFEW_TEST}:3", f"{DFEW_TRAIN}:2", "--allow-split-overlap"], append(r / DFEW_TEST, "1,1\n")
        ),
        id="dfew-same-video-in-train-and-test-of-a-fold",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect(
            ["set_2.csv", "header"], write(r / DFEW_TRAIN.replace("set_1", "set_2"), "video_name,label\n")
        ),
        id="dfew-header-only",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect([f"{DFEW_TRAIN}:1"], set_line(r / DFEW_TRAIN, 1, "video,label")),
        id="dfew-first-line-neither-header-nor-data",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect([f"{DFEW_TRAIN}:3", "1-7"], set_line(r / DFEW_TRAIN, 3, "2,8")),
        id="dfew-label-outside",
    ),
    pytest.param(
        "affectnet",
        lambda r, t: expect(
            [f"{AFFECTNET}/training.csv:2", f"{AFFECTNET}/validation.csv:3"],
            append(r / AFFECTNET / "validation.csv", "1/img0.jpg,0,0,100,100,1.0;2.0;3.0,0,0.1,0.2\n"),
        ),
        id="affectnet-same-image-in-training-and-validation",
    ),
    pytest.param(
        "affectnet",
        lambda r, t: expect(
            [f"{AFFECTNET}/training.csv:9", "line 2"],
            append(r / AFFECTNET / "training.csv", "1/img0.jpg,0,0,100,100,1;2,6,0.1,0.2\n"),
        ),
        id="affectnet-duplicate-conflicting-labels",
    ),
    pytest.param(
        "affectnet",
        lambda r, t: expect(
            [f"{AFFECTNET}/training.csv:3", "9"],
            set_line(r / AFFECTNET / "training.csv", 3, "1/img1.jpg,0,0,100,100,1.0,2.0,1,0.1,0.2"),
        ),
        id="affectnet-extra-field-would-shift-the-label",
    ),
    pytest.param(
        "affectnet",
        lambda r, t: expect(
            [f"{AFFECTNET}/training.csv:1", "header"],
            set_line(
                r / AFFECTNET / "training.csv",
                1,
                "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,valence,expression,arousal",
            ),
        ),
        id="affectnet-header-columns-swapped",
    ),
    pytest.param(
        "affectnet",
        lambda r, t: expect(
            [f"{AFFECTNET}/training.csv:2", "relative"],
            set_line(r / AFFECTNET / "training.csv", 2, "../../etc/x.jpg,0,0,1,1,1;2,0,0,0"),
        ),
        id="affectnet-path-leaves-the-root",
    ),
    pytest.param(
        "mafw",
        lambda r, t: expect([f"{MAFW}:3", "line 1"], append(r / MAFW, "00019.mp4 fear\n")),
        id="mafw-duplicate-conflicting-labels",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split/train.txt:1", "split/val.txt:2"], append(r / "split" / "val.txt", "P01/v1.mp4,1,Well\n")
        ),
        id="bah-same-video-in-train-and-val",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split/val.txt:2", "line 1"], append(r / "split" / "val.txt", "P01/v3.mp4,1,I like it\n")
        ),
        id="bah-duplicate-conflicting-labels",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split-frames/train.txt:4", "frames after"],
            append(r / "split-frames" / "train.txt", "P01/v1.mp4/frame-99999999.jpg,0\n"),
        ),
        id="bah-frame-number-typo",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split-frames/train.txt:4", "frame_segments"],
            append(r / "split-frames" / "train.txt", "P01/v1.mp4/frame-20.jpg,0\n"),
        ),
        id="bah-frame-label-disagrees-with-frame-segments",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split-frames/train.txt:4"], append(r / "split-frames" / "train.txt", "P01/v1.mp4/frame-abc.jpg,1\n")
        ),
        id="bah-frame-name-not-a-number",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:3", "frame_segments"],
            set_line(r / "annotations" / "v1.yaml", 3, "frame_segments: '[(12, 99999999)]'"),
        ),
        id="bah-frame-segment-typo",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v2.yaml:2", "absent"], write(r / "annotations" / "v2.yaml", "global_label: 0\nsegments: [(1.0, 2.0)]\n")
        ),
        id="bah-segments-in-a-video-labelled-absent",
    ),
    # --- formerly tracebacks: one line naming the file (and line)
    pytest.param(
        "bah",
        lambda r, t: expect(["v1.yaml", "mapping"], write(r / "annotations" / "v1.yaml", "- a\n- b\n")),
        id="bah-yaml-is-a-list",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(["v1.yaml", "mapping"], write(r / "annotations" / "v1.yaml", "just some text\n")),
        id="bah-yaml-is-a-string",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "segments"], set_line(r / "annotations" / "v1.yaml", 2, "segments: [(1, 'a')]")
        ),
        id="bah-segment-not-numbers",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "segments"], set_line(r / "annotations" / "v1.yaml", 2, "segments: [(1, 2, 3)]")
        ),
        id="bah-segment-triple",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "segments"], set_line(r / "annotations" / "v1.yaml", 2, "segments: [(0.5, 1e999)]")
        ),
        id="bah-segment-infinite",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(["v1.yaml:2", "segments"], set_line(r / "annotations" / "v1.yaml", 2, "segments: {a: 1}")),
        id="bah-segments-a-mapping",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "segments"], set_line(r / "annotations" / "v1.yaml", 2, "segments: [(3.0, 1.0)]")
        ),
        id="bah-segment-reversed",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "twice"], write(r / "annotations" / "v1.yaml", "global_label: 1\nglobal_label: 0\n")
        ),
        id="bah-yaml-key-given-twice",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["v1.yaml:2", "UTF-8"], write(r / "annotations" / "v1.yaml", b"global_label: 1\ntranscript: caf\xe9\n")
        ),
        id="bah-yaml-not-utf8",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split/train.txt:3", "UTF-8"], append(r / "split" / "train.txt", b"P03/v9.mp4,1,caf\xe9\n")
        ),
        id="bah-split-line-not-utf8",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["participants.csv:3", "UTF-8"],
            write(r / "participants.csv", b"participant_id,age,sex\nP01,34,F\nP02,5\xff1,M\n"),
        ),
        id="bah-participants-not-utf8",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(["participants.csv:4", "line 2"], append(r / "participants.csv", "P01,35,F\n")),
        id="bah-participant-given-twice-differently",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(["participants.csv:1", "id column"], write(r / "participants.csv", "name,age\nP01,3\n")),
        id="bah-participants-without-id-column",
    ),
    pytest.param(
        "bah",
        lambda r, t: expect(
            ["split/train.txt:2", "relative"], set_line(r / "split" / "train.txt", 2, "/etc/v2.mp4,0,x")
        ),
        id="bah-video-path-absolute",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect(
            ["00001.csv:3", "UTF-8"],
            set_line((of := openface_dir(t)) / "00001.csv", 3, b"\xff\xfe"),
            args=["--openface", of],
        ),
        id="openface-line-not-utf8",
    ),
    pytest.param(
        "dfew",
        lambda r, t: expect(
            ["00001.csv:5", "finite"],
            set_line((of := openface_dir(t)) / "00001.csv", 5, "4,0,0.16,0.98,1" + ",nan" * 34),
            args=["--openface", of],
        ),
        id="openface-nan",
    ),
    pytest.param(
        "dfew",
        lambda r, t: (["--openface", write(t / "of" / "00001.csv", "a,b\n1,2\n").parent], ["00001.csv:1", "OpenFace"]),
        id="openface-not-an-openface-csv",
    ),
]


@pytest.mark.parametrize(("dataset", "make"), CASES)
def test_bad_input_is_refused_with_one_line_and_nothing_changed(tmp_path, cli, dataset, make):
    root = TREES[dataset](tmp_path / "data" / dataset)
    args, names = make(root, tmp_path)
    args = [str(a) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = checksums(tmp_path)
    result = cli("data", "build", dataset, "--root", root, *args)
    line = assert_refused(result, *names)
    assert line.startswith("emoreason data: error: "), line
    assert checksums(tmp_path) == before  # the root, the --out folder and everything beside: untouched


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 35


# ---------------------------------------------------------------------------------------------------------------
# --skip-bad: every builder counts and lists its per-line problems


def _two_bad_lines(dataset: str, root: Path) -> list[str]:
    """Put two malformed lines into a dataset's annotations; returns the file:line each must be listed as."""
    if dataset == "abaw":
        insert_line(root / EXPR / "vidA.txt", 8, "")
        set_line(root / MTL, 4, "vidM/00003.jpg,oops")
        return [f"{EXPR}/vidA.txt:8", f"{MTL}:4"]
    if dataset == "bah":
        append(root / "split" / "train.txt", b"P03/v9.mp4,1,caf\xe9\n")
        append(root / "split-frames" / "train.txt", "P01/v1.mp4/frame-abc.jpg,1\n")
        return ["split/train.txt:3", "split-frames/train.txt:4"]
    if dataset == "rafdb":
        append(root / RAFDB, "train_00003.jpg 9\ntrain_00004.jpg\n")
        return [f"{RAFDB}:5", f"{RAFDB}:6"]
    if dataset == "affectnet":
        append(root / AFFECTNET / "training.csv", "1/x.jpg,0,0,1,1,1;2,happy,0,0\n1/y.jpg,0,0\n")
        return [f"{AFFECTNET}/training.csv:9", f"{AFFECTNET}/training.csv:10"]
    if dataset == "dfew":
        append(root / DFEW_TRAIN, "7;3\n")
        append(root / DFEW_TEST, "8,0\n")
        return [f"{DFEW_TRAIN}:4", f"{DFEW_TEST}:3"]
    append(root / MAFW, "00030.mp4 joy\n00031.mp4\n")
    return [f"{MAFW}:3", f"{MAFW}:4"]


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_skip_bad_counts_and_lists_every_problem(tmp_path, cli, dataset):
    root = TREES[dataset](tmp_path / dataset)
    expected = _two_bad_lines(dataset, root)
    out = tmp_path / "out"
    refused = cli("data", "build", dataset, "--root", root, "--out", out)
    assert_refused(refused, expected[0])
    result = cli("data", "build", dataset, "--root", root, "--out", out, "--skip-bad")
    assert result.code == 0, result.err
    assert "malformed lines skipped: 2" in result.out
    listed = [line for line in result.out.splitlines() if line.strip().startswith("bad:")]
    assert len(listed) == 2 and all(any(e in line for line in listed) for e in expected), result.out
    report = json.loads((out / "build_report.json").read_text())
    assert len(report["bad_lines"]) == 2 and report["options"]["skip_bad"] is True


def test_skip_bad_covers_bad_yaml_and_keeps_abaw_frame_numbers(tmp_path, cli):
    bah = layouts.bah_tree(tmp_path / "bah")
    write(bah / "annotations" / "v1.yaml", "- a list\n")
    write(bah / "annotations" / "v2.yaml", b"global_label: 0\ncues: {face: caf\xe9}\n")
    result = cli("data", "build", "bah", "--root", bah, "--out", tmp_path / "o1", "--skip-bad")
    assert result.code == 0 and "malformed lines skipped: 2" in result.out, result.err
    assert "v1.yaml:1" in result.out and "v2.yaml:2" in result.out
    abaw = layouts.abaw_tree(tmp_path / "abaw")
    insert_line(abaw / EXPR / "vidA.txt", 3, "")  # frame 2 is blank: a masked frame, later frames keep their number
    result = cli("data", "build", "abaw", "--root", abaw, "--out", tmp_path / "o2", "--skip-bad", "--task", "expr")
    assert result.code == 0, result.err
    from datasets import load_from_disk

    rows = {r["id"]: r for r in load_from_disk(str(tmp_path / "o2"))["train"]}
    first = rows["abaw/expr/train/vidA/00001-00016"]
    # The file now has 41 frame lines (one blank): labels stay on their frames, the blank one masked.
    assert first["expression_valid"][1] is False and first["expression_frames"][:3] == [4, -1, 4]
    assert rows["abaw/expr/train/vidA/00026-00041"]["expression_frames"][-8:] == [1] * 8


# ---------------------------------------------------------------------------------------------------------------
# Counted, not refused: exact duplicates, allowed overlap, stray files, missing media


def test_exact_duplicates_are_dropped_and_counted(tmp_path, cli):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    append(root / RAFDB, "train_00001.jpg 4\n")
    result = cli("data", "build", "rafdb", "--root", root, "--out", tmp_path / "out")
    assert result.code == 0 and "exact duplicates dropped: 1" in result.out, result.err
    assert f"{RAFDB}:5: repeats" in result.out
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "out"))["train"].num_rows == 2


def test_allowed_split_overlap_is_counted_and_listed(tmp_path, cli):
    root = layouts.dfew_tree(tmp_path / "dfew")
    append(root / DFEW_TEST, "1,1\n")
    result = cli("data", "build", "dfew", "--root", root, "--out", tmp_path / "out", "--allow-split-overlap")
    assert result.code == 0 and "split overlaps allowed: 1" in result.out, result.err
    assert "WARNING split overlap" in result.out and "00001.mp4" in result.out


def test_stray_files_are_ignored_and_listed_never_splits(tmp_path, cli):
    dfew = layouts.dfew_tree(tmp_path / "dfew")
    write(dfew / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_x.csv", "video_name,label\n9,1\n")
    write(dfew / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1 (copy).csv", "video_name,label\n9,1\n")
    write(dfew / "EmoLabel_DataSplit" / "README.txt", "notes")
    write(dfew / "EmoLabel_DataSplit" / "train(single-labeled)" / ".DS_Store", "x")
    result = cli("data", "build", "dfew", "--root", dfew, "--out", tmp_path / "o1")
    assert result.code == 0, result.err
    assert "ignored files: 3" in result.out and "set_x.csv" in result.out and "set_1 (copy).csv" in result.out
    from datasets import load_from_disk

    assert sorted(load_from_disk(str(tmp_path / "o1"))) == [
        f"fold{k}_{p}" for k in range(1, 6) for p in ("test", "train")
    ]
    mafw = layouts.mafw_tree(tmp_path / "mafw")
    write(mafw / "Train & Test Set" / "single" / "no_caption" / "set_1" / "notes.txt", "00019.mp4 anger\n")
    result = cli("data", "build", "mafw", "--root", mafw, "--out", tmp_path / "o2")
    assert result.code == 0 and "ignored files: 1" in result.out and "notes.txt" in result.out, result.err
    assert "fold1_notes" not in result.out


def test_misspelt_bah_yaml_key_is_a_listed_warning(tmp_path, cli):
    root = layouts.bah_tree(tmp_path / "bah")
    write(root / "annotations" / "v1.yaml", "global_label: 1\nsegmnets: [(0.5, 2.25)]\n")
    result = cli("data", "build", "bah", "--root", root, "--out", tmp_path / "out")
    assert result.code == 0 and "warnings: 1" in result.out, result.err
    assert "v1.yaml: keys ignored" in result.out and "segmnets" in result.out


def test_missing_raw_videos_folder_is_reported(tmp_path, cli):
    import shutil

    root = layouts.abaw_tree(tmp_path / "abaw")
    shutil.rmtree(root / "videos")
    result = cli("data", "build", "abaw", "--root", root, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "missing media: 2" in result.out  # vidA (EXPR and VA) and vidC (its _left and _right share it)
    assert "no raw videos folder" in result.out


# ---------------------------------------------------------------------------------------------------------------
# The output folder over time: rebuilt in place, an empty folder taken, a failure leaves what was there


def test_output_folder_is_reused_and_failures_leave_it_as_it_was(tmp_path, cli):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    out = tmp_path / "out"
    assert cli("data", "build", "rafdb", "--root", root, "--out", out).code == 0
    assert (out / MARKER).is_file() and (out / "dataset_dict.json").is_file()
    assert cli("data", "build", "rafdb", "--root", root, "--out", out, "--seed", "1").code == 0  # ours: rebuilt
    before = checksums(out)
    append(root / RAFDB, "train_00009.jpg 12\n")
    assert_refused(cli("data", "build", "rafdb", "--root", root, "--out", out), f"{RAFDB}:5")
    assert checksums(out) == before
    (tmp_path / "empty").mkdir()
    assert_refused(cli("data", "build", "rafdb", "--root", root, "--out", tmp_path / "empty"), f"{RAFDB}:5")
    assert list((tmp_path / "empty").iterdir()) == []  # taken back as it was
    assert_refused(cli("data", "build", "rafdb", "--root", root, "--out", tmp_path / "a" / "b"), f"{RAFDB}:5")
    assert not (tmp_path / "a").exists()
    assert not [p for p in tmp_path.iterdir() if TMP_TAG in p.name or ".building-" in p.name]


# ---------------------------------------------------------------------------------------------------------------
# A build killed while it writes

# Installed through PYTHONPATH into the child only: it stops itself (SIGSTOP) at the chosen point of the write, so
# the test kills it there for certain, from outside, with SIGKILL.
_STOPPER = """
import os, signal, sys

_at, _out = os.environ["EMOREASON_TEST_STOP_AT"], os.environ["EMOREASON_TEST_OUT"]


def _hook(event, args):
    path = str(args[0]) if args else ""
    if _at == "write" and event == "open" and ".emoreason-tmp-" in path and path.endswith(".arrow"):
        os.kill(os.getpid(), signal.SIGSTOP)  # half the dataset written into the temporary folder
    if _at == "swap" and event == "os.rename" and len(args) > 1 and str(args[1]) == _out and ".emoreason-tmp-" in path:
        os.kill(os.getpid(), signal.SIGSTOP)  # the previous dataset moved aside, the new one not yet in place


sys.addaudithook(_hook)
"""


def _litter(folder: Path) -> list[str]:
    found = []
    for base in (folder, folder / "out"):
        if base.is_dir():
            found += [p.name for p in base.iterdir() if TMP_TAG in p.name or ".building-" in p.name]
    return found


@pytest.mark.parametrize("stop_at", ["write", "swap"])
def test_killed_build_keeps_the_previous_dataset_and_the_next_run_cleans_up(tmp_path, cli, stop_at):
    root = layouts.abaw_tree(tmp_path / "abaw")
    out = tmp_path / "out"
    assert cli("data", "build", "abaw", "--root", root, "--out", out).code == 0
    previous = checksums(out)
    write(tmp_path / "hook" / "sitecustomize.py", _STOPPER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "EMOREASON_TEST_STOP_AT": stop_at,
        "EMOREASON_TEST_OUT": str(out),
    }
    argv = [sys.executable, "-m", "mllm.cli", "data", "build", "abaw", "--root", str(root), "--out", str(out)]
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 (a file, not a pipe: a full pipe would block the child)
    child = subprocess.Popen(argv + ["--seed", "5"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        pid, status = os.waitpid(child.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            break
        assert not pid, f"the build ended before it was stopped: {(tmp_path / 'child.log').read_text()}"
        assert time.monotonic() < deadline, "the build never reached the write"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    os.kill(child.pid, signal.SIGCONT)
    child.wait(timeout=60)
    log.close()
    assert child.returncode == -signal.SIGKILL
    assert _litter(tmp_path), "killed mid-write: its temporary folder must be there"
    if stop_at == "write":
        assert checksums(out) == previous  # the previous dataset, intact
    else:
        assert not out.exists()  # moved aside by the rename the build was killed after
        # The next run puts the previous dataset back first, even one that is then refused.
        append(root / EXPR / "vidA.txt", "x\n")
        assert_refused(cli("data", "build", "abaw", "--root", root, "--out", out), "vidA.txt:42")
        assert checksums(out) == previous
        assert not _litter(tmp_path)
        set_line(root / EXPR / "vidA.txt", 42, "1")
    assert cli("data", "build", "abaw", "--root", root, "--out", out).code == 0
    assert not _litter(tmp_path)
    from datasets import load_from_disk

    assert load_from_disk(str(out))["train"].num_rows > 0
