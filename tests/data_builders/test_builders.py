import json
import re
from collections import Counter

import pytest
from datasets import load_from_disk

from data_builders import get_builder
from data_builders.common import BuildOptions, BuildReport
from data_builders.schema import AnnotationError, write_dataset
from mllm.cli import main as cli
from mllm.output import parse
from tests.data_builders import layouts


def build(name, root, **options):
    report = BuildReport()
    samples = get_builder(name)(BuildOptions(root=root, **options), report)
    return samples, report


def by_id(samples):
    return {s.id: s for s in samples}


def assert_targets_grounded(samples):
    """Every target parses, and every AU it names is labelled active for that sample."""
    for s in samples:
        result = parse(
            s.target,
            s.task,
            "mafw11" if s.dataset == "mafw" else "affectnet8" if s.expression == "Contempt" else "abaw_expr",
        )
        assert result.ok, (s.id, s.target, result)
        named = set(re.findall(r"\bAU\d+\b", s.target))
        assert named <= set(s.aus), (s.id, named - set(s.aus), s.target)


# ---------------------------------------------------------------------------------------------------------------
# ABAW


@pytest.mark.parametrize("expr_folder", ["EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"])
def test_abaw_expr_clips_labels_masks_and_coverage(tmp_path, expr_folder):
    root = layouts.abaw_tree(tmp_path, expr_folder=expr_folder)
    samples, report = build("abaw", root, tasks=("expr",))
    clips = sorted((s for s in samples if s.subject == "vidA"), key=lambda s: s.frame_indices[0])
    # 40 frames, windows of 16 every 16, the last aligned to the end: 1-16, 17-32, 25-40.
    assert [(c.frame_indices[0], c.frame_indices[-1]) for c in clips] == [(1, 16), (17, 32), (25, 40)]
    assert [c.expression for c in clips] == ["Happiness", "Sadness", "Anger"]
    assert clips[1].expression_valid == [True] * 13 + [False] * 3
    assert clips[1].expression_frames[-3:] == [-1, -1, -1]
    assert set().union(*(c.frame_indices for c in clips)) == set(range(1, 41))
    # Missing crop 00005 falls back to the nearest frame; the clip still lists 16 frames.
    assert clips[0].frames[4].endswith("vidA/00004.jpg") and len(clips[0].frames) == 16
    assert report.fallback_frames == 1
    # vidB: every frame invalid -> no clip, its frames counted.
    assert not [s for s in samples if s.subject == "vidB"]
    assert report.invalid_frames == 3 + 20 and report.total_frames == 60
    assert clips[0].video.endswith("videos/batch1/vidA.mp4") and clips[0].split == "train"
    assert [c.source_line for c in clips] == [2, 18, 26]  # line 1 is the header; frame i is on line i + 1
    assert_targets_grounded(samples)
    assert all(s.target_grounding == "labels" for s in samples)  # EXPR-only: no AU labels to name


def test_abaw_au_left_right_share_audio_and_only_active_aus_are_named(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    samples, _ = build("abaw", root, tasks=("au",))
    assert sorted(s.subject for s in samples) == ["vidC_left", "vidC_right"]
    for s in samples:
        assert s.audio.endswith("videos/batch1/vidC.mp4")  # the source video of both subjects
        assert s.aus == ["AU6", "AU12"]  # AU25 is active in 3 of 15 valid frames only
        assert s.au_valid[3] is False and s.au_frames[3] == [-1] * 12
        assert s.target_grounding == "au" and "AU25" not in s.target
        assert parse(s.target, "au").answer == ("AU6", "AU12")
    assert_targets_grounded(samples)


def test_abaw_va(tmp_path):
    samples, _ = build("abaw", layouts.abaw_tree(tmp_path), tasks=("va",))
    (clip,) = samples
    assert clip.va_valid == [True] * 10 + [False] * 2 + [True] * 4
    assert clip.valence == pytest.approx((10 * 0.5 - 4 * 0.5) / 14, abs=1e-4)
    assert clip.arousal == pytest.approx((10 * 0.25 + 4 * 0.75) / 14, abs=1e-4)
    assert parse(clip.target, "va").ok


def test_abaw_multitask_list(tmp_path):
    samples, _ = build("abaw", layouts.abaw_mtl(tmp_path))
    tasks = {s.task: s for s in samples}
    assert set(tasks) == {"expr", "au", "va"}
    assert tasks["expr"].expression == "Sadness" and tasks["au"].aus == ["AU1", "AU4", "AU15"]
    assert tasks["va"].valence == pytest.approx(-0.4) and tasks["expr"].frame_indices == list(range(1, 11))
    assert tasks["au"].source_file.endswith("training_set_annotations.txt")
    assert all(s.source_line == 2 for s in samples)  # frame 1 of vidM is on line 2 of the list


def test_abaw_malformed_line_names_file_line_and_text(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    path = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set" / "vidA.txt"
    lines = path.read_text().splitlines()
    lines[7] = "4;5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"vidA\.txt:8: malformed EXPR line .*'4;5'"):
        build("abaw", root, tasks=("expr",))
    samples, report = build("abaw", root, tasks=("expr",), skip_bad=True)
    assert len(report.bad_lines) == 1 and "vidA.txt:8" in report.bad_lines[0]
    clip = next(s for s in samples if s.subject == "vidA")
    assert clip.expression_valid[6] is False  # the bad line stays a (masked) frame: later lines keep their index


def test_abaw_label_outside_the_space_is_an_error(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    path = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set" / "vidA.txt"
    path.write_text(path.read_text().replace("\n1\n", "\n9\n", 1))
    with pytest.raises(AnnotationError, match="expression code 9 is outside 0-7"):
        build("abaw", root, tasks=("expr",))


def test_abaw_wrong_header_stops_even_with_skip_bad(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    path = root / "6th_ABAW_Annotations" / "AU_Detection_Challenge" / "Train_Set" / "vidC_left.txt"
    lines = path.read_text().splitlines()
    lines[0] = "AU2,AU1" + lines[0][7:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match="vidC_left.txt:1: header does not match AU"):
        build("abaw", root, tasks=("au",), skip_bad=True)


# ---------------------------------------------------------------------------------------------------------------
# BAH


def test_bah_transcripts_with_commas_yaml_tuples_segments_and_frames(tmp_path):
    samples, report = build("bah", layouts.bah_tree(tmp_path))
    s = by_id(samples)
    video = s["bah/train/v1"]
    assert video.ah == 1 and video.transcript == "Well, I mean, maybe, I don't know, it depends"
    assert video.subject == "P01" and video.cues["voice"] == "long pauses, filled pauses"
    segments = [x for x in samples if x.id.startswith("bah/train/v1/") and x.start_s >= 0]
    assert [(x.start_s, x.end_s) for x in segments] == [(0.5, 2.25), (3.0, 4.5)]
    assert all(x.ah == 1 for x in segments)
    assert s["bah/train/v2"].ah == 0 and s["bah/validation/v3"].split == "validation"
    prompt_text = json.loads(json.dumps(video.prompt))[0]["content"][1]["text"]
    assert prompt_text.startswith('Transcript: "Well, I mean,')
    assert parse(video.target, "ah").answer is True and "long pauses" in video.target
    frames = s["bah/train/v1/frames"]
    assert frames.frame_indices == [12, 13, 200] and frames.ah_frames == [1, 1, 0]
    assert report.bad_lines == [] and report.missing_media == []
    assert_targets_grounded(samples)


def test_bah_bad_yaml_tuple_and_bad_split_line(tmp_path):
    root = layouts.bah_tree(tmp_path)
    (root / "annotations" / "v1.yaml").write_text("global_label: 1\nsegments: '[(0.5, ]'\n")
    with pytest.raises(AnnotationError, match=r"v1\.yaml:2: 'segments' is not a list"):  # the key's line
        build("bah", root)
    (root / "annotations" / "v1.yaml").write_text("global_label: 1\n")
    (root / "split" / "val.txt").write_text("P01/v3.mp4,maybe,hmm\n")
    with pytest.raises(AnnotationError, match=r"val\.txt:1: expected 'video_path,label"):
        build("bah", root)


# ---------------------------------------------------------------------------------------------------------------
# Image and video datasets, OpenFace


def test_rafdb(tmp_path):
    samples, report = build("rafdb", layouts.rafdb_tree(tmp_path))
    s = by_id(samples)
    assert s["rafdb/train/train_00001"].expression == "Happiness" and s["rafdb/test/test_0001"].expression == "Neutral"
    assert s["rafdb/test/test_0002"].expression == "Surprise"
    assert s["rafdb/train/train_00001"].image.endswith("Image/aligned/train_00001_aligned.jpg")
    assert len(report.missing_media) == 1 and "test_0002" in report.missing_media[0]


@pytest.mark.parametrize(("classes", "expected"), [(7, 3), (8, 4)])
def test_affectnet_excludes_none_uncertain_nonface_and_contempt_for_7(tmp_path, classes, expected):
    samples, report = build("affectnet", layouts.affectnet_tree(tmp_path), classes=classes)
    train = [s for s in samples if s.split == "train"]
    assert len(train) == expected
    assert ("Contempt" in {s.expression for s in train}) == (classes == 8)
    assert {s.split for s in samples} == {"train", "validation"}


def test_dfew_folds_and_mafw_classes(tmp_path):
    dfew, _ = build("dfew", layouts.dfew_tree(tmp_path / "dfew"))
    assert {s.split for s in dfew} == {f"fold{k}_{p}" for k in range(1, 6) for p in ("train", "test")}
    assert by_id(dfew)["dfew/fold1_train/00002"].expression == "Anger"
    assert by_id(dfew)["dfew/fold3_test/00003"].expression == "Fear"
    mafw, _ = build("mafw", layouts.mafw_tree(tmp_path / "mafw"), splits=("fold2_train",))
    assert sorted(s.expression for s in mafw) == ["Anxiety", "Fear"]
    assert_targets_grounded(mafw)


def test_openface_csv_joined_to_a_video_grounds_the_explanation(tmp_path):
    from data_builders.openface import join

    root = layouts.dfew_tree(tmp_path / "dfew")
    layouts.openface_csv(tmp_path / "openface" / "00001.csv", 30, active=("AU6", "AU12"))
    samples, report = build("dfew", root, splits=("fold1_train",))
    assert join(samples, tmp_path / "openface", BuildOptions(root=root), report) == 1
    joined = by_id(samples)["dfew/fold1_train/00001"]
    assert joined.aus == ["AU6", "AU12"] and joined.target_grounding == "au"
    assert joined.au_intensity["AU12"] == pytest.approx(2.5)
    assert "marked AU12 (lip corner puller)" in joined.target and "happiness" in joined.target
    assert by_id(samples)["dfew/fold1_train/00002"].target_grounding == "labels"
    assert_targets_grounded(samples)


# ---------------------------------------------------------------------------------------------------------------
# Writing, determinism, the CLI


def test_written_dataset_is_deterministic_and_atomic(tmp_path, monkeypatch):
    root = layouts.abaw_tree(tmp_path / "abaw")
    samples, _ = build("abaw", root, seed=3)
    write_dataset(samples, tmp_path / "out1")
    again, _ = build("abaw", root, seed=3)
    write_dataset(list(reversed(again)), tmp_path / "out2")
    one, two = load_from_disk(str(tmp_path / "out1")), load_from_disk(str(tmp_path / "out2"))
    assert one["train"].to_list() == two["train"].to_list()
    # A build that fails while writing leaves the previous dataset in place and no temporary folder behind.
    import datasets

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(samples[:1], tmp_path / "out1")
    assert load_from_disk(str(tmp_path / "out1"))["train"].num_rows == one["train"].num_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abaw", "out1", "out2"]


def test_seed_changes_phrasing_not_labels(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    a, _ = build("abaw", root, seed=0, tasks=("au",))
    b, _ = build("abaw", root, seed=7, tasks=("au",))
    assert [x.aus for x in a] == [x.aus for x in b]
    assert any(x.target != y.target for x, y in zip(a, b, strict=True)) or len({x.target for x in a + b}) > 1


def test_cli_build_summary_and_inspect(tmp_path, capsys):
    root = layouts.abaw_tree(tmp_path / "abaw")
    assert cli(["data", "build", "abaw", "--root", str(root), "--out", str(tmp_path / "out"), "--task", "expr"]) == 0
    out = capsys.readouterr().out
    assert "Happiness: 1" in out and "23 invalid" in out and "missing crops filled from the nearest frame" in out
    assert cli(["data", "inspect", str(tmp_path / "out"), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "== train" in out and "target: <think>" in out
    # A malformed line: exit 1 and one line naming file and line.
    path = next((root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set").glob("*.txt"))
    path.write_text(path.read_text() + "x\n")
    assert cli(["data", "build", "abaw", "--root", str(root), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "vidA.txt:42" in err and not (tmp_path / "bad").exists()


def test_bah_global_label_disagreeing_with_the_split_file(tmp_path):
    root = layouts.bah_tree(tmp_path)
    (root / "annotations" / "v2.yaml").write_text("global_label: 1\n")  # split/train.txt says 0
    with pytest.raises(AnnotationError, match=r"v2.yaml: global label disagrees with train.txt:2 \(0\)"):
        build("bah", root)
    samples, report = build("bah", root, skip_bad=True)
    assert len(report.bad_lines) == 1 and "disagrees" in report.bad_lines[0]
    assert by_id(samples)["bah/train/v2"].ah == 0  # the split file's label is kept


def test_abaw_file_without_header_and_provenance_lines(tmp_path):
    root = layouts.abaw_tree(tmp_path)
    path = root / "6th_ABAW_Annotations" / "EXPR_Recognition_Challenge" / "Train_Set" / "vidA.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")  # no header: line i is frame i
    samples, _ = build("abaw", root, tasks=("expr",))
    clips = sorted((s for s in samples if s.subject == "vidA"), key=lambda s: s.frame_indices[0])
    assert [c.expression for c in clips] == ["Happiness", "Sadness", "Anger"]
    assert [c.source_line for c in clips] == [1, 17, 25]


# ---------------------------------------------------------------------------------------------------------------
# Explanations never argue against their answer


# Every expression label and common words for it: a target's reasoning may name its own answer's, never another's.
# ("Other" is an ordinary English word, so ABAW's Other label has none.)
EMOTION_WORDS = {
    "Neutral": ("neutral", "expressionless"),
    "Anger": ("anger", "angry", "rage", "furious", "fury", "annoyed"),
    "Disgust": ("disgust", "disgusted", "revulsion", "repulsed"),
    "Fear": ("fear", "fearful", "afraid", "scared", "terror", "frightened"),
    "Happiness": ("happiness", "happy", "joy", "joyful", "glad", "delight", "pleasure"),
    "Sadness": ("sadness", "sad", "sorrow", "grief", "unhappy"),
    "Surprise": ("surprise", "surprised", "astonishment", "amazement", "startled"),
    "Contempt": ("contempt", "contemptuous", "scorn", "disdain"),
    "Anxiety": ("anxiety", "anxious", "worry", "worried", "nervous"),
    "Helplessness": ("helplessness", "helpless"),
    "Disappointment": ("disappointment", "disappointed"),
    "Other": (),
}


def other_emotions_named(think: str, answer: str) -> list[str]:
    own = set(EMOTION_WORDS[answer])
    return [
        word
        for label, words in EMOTION_WORDS.items()
        if label != answer
        for word in words
        if word not in own and re.search(rf"\b{word}\b", think, re.IGNORECASE)
    ]


def assert_reasoning_supports_answer(samples):
    checked = 0
    for s in samples:
        if s.task != "expr":
            continue
        think = re.search(r"<think>(.*)</think>", s.target, re.DOTALL).group(1)
        assert not other_emotions_named(think, s.expression), (s.id, s.target)
        assert s.target_grounding in ("au", "labels", "conflict"), s.id
        if s.target_grounding == "conflict":
            assert " not " in think, (s.id, think)  # says plainly that the units are not the usual ones
        checked += 1
    return checked


def test_cot_never_names_another_emotion_for_any_label_and_au_combination():
    from itertools import combinations

    from data_builders.cot import EMFACS, build_target
    from mllm.labels import FACS_NAMES, LABEL_SPACES

    labels = sorted({label for space in LABEL_SPACES.values() for label in space})
    combos = [list(c) for n in range(3) for c in combinations(sorted(FACS_NAMES), n)]
    combos += [list(p) for p in EMFACS.values()]
    conflicts = 0
    for label in labels:
        for aus in [None, *combos]:
            target, grounding = build_target(f"x/{label}/{aus}", "expr", label, aus, seed=len(str(aus)))
            think = target.split("</think>")[0]
            assert not other_emotions_named(think, label), (label, aus, target)
            if label in EMFACS and aus is not None:
                supports = any(a in EMFACS[label] for a in aus)
                assert (grounding == "conflict") == (not supports), (label, aus, target)
                if supports:
                    assert label.lower() in think, target
            conflicts += grounding == "conflict"
    assert conflicts  # the cases above do meet disagreements


def test_no_builder_explains_an_expression_with_another_emotion(tmp_path):
    """Every builder, with AU sources that agree and disagree with the expression labels: the multi-task list's
    own AU labels, and OpenFace CSVs joined to DFEW and MAFW videos."""
    from data_builders.openface import join

    mtl = {"vidM": (5, ("AU1", "AU4", "AU15")), "vidN": (4, ("AU1", "AU4", "AU15")), "vidO": (0, ("AU6", "AU12"))}
    mtl |= {"vidP": (0, ("AU25",)), "vidQ": (7, ("AU6", "AU12")), "vidR": (1, ())}
    roots = {
        "abaw": layouts.abaw_mtl(layouts.abaw_tree(tmp_path / "abaw"), mtl),
        "rafdb": layouts.rafdb_tree(tmp_path / "rafdb"),
        "affectnet": layouts.affectnet_tree(tmp_path / "affectnet"),
        "dfew": layouts.dfew_tree(tmp_path / "dfew"),
        "mafw": layouts.mafw_tree(tmp_path / "mafw"),
    }
    openface = tmp_path / "openface"
    # DFEW 00001 Happiness, 00002 Anger, 00003 Fear; MAFW 00019 Anxiety, 00020 Fear, 00021 Helplessness.
    for name, active in {
        "00001": ("AU5", "AU23"),
        "00002": ("AU6", "AU12"),
        "00003": ("AU1", "AU2", "AU5", "AU26"),
        "00019": ("AU6", "AU12"),
        "00020": ("AU6", "AU12"),
        "00021": (),
    }.items():
        layouts.openface_csv(openface / f"{name}.csv", 20, active=active)
    groundings = Counter()
    for name, root in roots.items():
        samples, report = build(name, root)
        if name in ("dfew", "mafw"):
            assert join(samples, openface, BuildOptions(root=root), report) > 0
        assert assert_reasoning_supports_answer(samples) > 0, name
        groundings.update(s.target_grounding for s in samples if s.task == "expr")
    assert groundings["conflict"] and groundings["au"] and groundings["labels"], groundings
    abaw = by_id(build("abaw", roots["abaw"])[0])
    assert abaw["abaw/expr/train/vidM/00001-00010"].target_grounding == "au"  # Sadness with its prototype
    assert abaw["abaw/expr/train/vidN/00001-00010"].target_grounding == "conflict"  # Happiness with AU1+AU4+AU15
    assert abaw["abaw/expr/train/vidO/00001-00010"].target_grounding == "conflict"  # Neutral with AU6+AU12
    assert abaw["abaw/expr/train/vidP/00001-00010"].target_grounding == "au"  # Neutral, lips part only
    assert abaw["abaw/expr/train/vidR/00001-00010"].target_grounding == "conflict"  # Anger, no AU active
    assert abaw["abaw/expr/train/vidN/00001-00010"].aus == ["AU1", "AU4", "AU15"]


def test_dfew_with_openface_disagreeing_is_marked_counted_and_droppable(tmp_path, capsys):
    root = layouts.dfew_tree(tmp_path / "dfew")
    openface = tmp_path / "openface"
    layouts.openface_csv(openface / "00001.csv", 30, active=("AU5", "AU23"))  # 00001 is labelled Happiness
    args = ["data", "build", "dfew", "--root", str(root), "--openface", str(openface), "--split", "fold1_train"]
    assert cli([*args, "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "answer: 1 (kept, marked target_grounding=conflict)" in out
    row = next(r for r in load_from_disk(str(tmp_path / "all"))["fold1_train"] if r["id"].endswith("00001"))
    assert row["target_grounding"] == "conflict" and "anger" not in row["target"].lower()
    assert "are not the usual ones for happiness" in row["target"] or "usually shows on a face" in row["target"]
    assert parse(row["target"], "expr").answer == "Happiness"
    report = json.loads((tmp_path / "all" / "build_report.json").read_text())
    assert report["conflict_targets"] == 1 and report["conflicts_dropped"] == 0
    assert cli([*args, "--out", str(tmp_path / "kept"), "--drop-conflicts"]) == 0
    ids = load_from_disk(str(tmp_path / "kept"))["fold1_train"]["id"]
    assert ids == ["dfew/fold1_train/00002"]


# ---------------------------------------------------------------------------------------------------------------
# Participant metadata and BAH frame segments


def test_bah_meta_from_participants_and_frame_segment_samples(tmp_path):
    root = layouts.bah_tree(tmp_path)
    (root / "participants.csv").write_text("participant_id,age,sex,site\nP01,34,F,Montreal\nP02,51,M,Laval\n")
    samples, report = build("bah", root)
    s = by_id(samples)
    assert s["bah/train/v1"].meta == {"age": "34", "sex": "F", "site": "Montreal"}
    assert s["bah/train/v2"].meta["site"] == "Laval" and s["bah/train/v1/frames"].meta["sex"] == "F"
    assert s["bah/train/v1/frames"].subject == "P01"
    segment = s["bah/train/v1/frames/12-54"]
    assert segment.frame_indices == list(range(12, 55)) and segment.ah_frames == [1] * 43 and segment.ah == 1
    assert s["bah/train/v1/frames/72-108"].meta == s["bah/train/v1"].meta
    assert all(x.meta == {} for x in build("rafdb", layouts.rafdb_tree(tmp_path / "rafdb"))[0])
    write_dataset(samples, tmp_path / "out")
    rows = load_from_disk(str(tmp_path / "out"))["train"]
    assert json.loads(rows[0]["meta"])["age"] in ("34", "51")
    # A participant missing from participants.csv: a warning, and no metadata for its samples.
    (root / "participants.csv").write_text("participant_id,age,sex\nP02,51,M\n")
    samples, report = build("bah", root)
    assert by_id(samples)["bah/train/v1"].meta == {} and "'P01' is not in participants.csv" in report.warnings[0]


def test_inspect_shortens_at_a_word_boundary_and_says_how_much_is_left():
    from data_builders.cli import _shortened

    text = "Which facial expression does the person show? " * 20
    short = _shortened(text, 100)
    kept, _, rest = short.partition(" ... (")
    assert text.startswith(kept) and text[len(kept)] == " " and len(kept) <= 100
    assert rest == f"{len(text) - len(kept)} more characters)"
    assert _shortened("fits", 100) == "fits"
