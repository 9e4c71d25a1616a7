"""OpenFace AUs joined to image datasets (RAF-DB, AffectNet): FaceLandmarkImg's per-face CSV, <image stem>.csv."""

from __future__ import annotations

import re

import pytest

from data_builders import get_builder
from data_builders.common import BuildOptions, BuildReport
from data_builders.openface import join
from data_builders.schema import AnnotationError
from mllm.cli import main as cli
from tests.data_builders import layouts


def rafdb(root, openface=None, **options):
    """The RAF-DB fixture tree built, and joined to `openface` when given."""
    report = BuildReport()
    options = BuildOptions(root=root, **options)
    samples = {s.id: s for s in get_builder("rafdb")(options, report)}
    joined = join(list(samples.values()), openface, options, report) if openface is not None else None
    return samples, joined, report


def cited(target: str) -> set[str]:
    return set(re.findall(r"\bAU\d+\b", target))


def test_the_most_confident_face_is_joined_and_the_target_cites_exactly_its_aus(tmp_path):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    openface = tmp_path / "openface"
    # Two faces in the picture: a bystander found with less confidence, listed first.
    layouts.openface_image_csv(
        openface / "train_00001_aligned.csv", faces=[(0.61, ("AU4", "AU15")), (0.97, ("AU6", "AU12", "AU25"))]
    )
    samples, joined, _ = rafdb(root, openface)
    assert joined == 1
    happy = samples["rafdb/train/train_00001"]
    assert happy.aus == ["AU6", "AU12", "AU25"] and happy.target_grounding == "au"
    assert happy.au_intensity["AU12"] == pytest.approx(3.5) and happy.au_intensity["AU4"] == pytest.approx(0.1)
    assert cited(happy.target) == {"AU6", "AU12", "AU25"}
    assert "happiness" in happy.target.lower() and happy.target.endswith("<answer>Happiness</answer>")


def test_aus_that_do_not_fit_the_label_mark_a_conflict_and_a_missing_csv_leaves_the_labels(tmp_path):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    openface = tmp_path / "openface"
    layouts.openface_image_csv(openface / "train_00002_aligned.csv", faces=[(0.9, ("AU6", "AU12"))])  # Sadness
    samples, joined, _ = rafdb(root, openface)
    assert joined == 1
    sad = samples["rafdb/train/train_00002"]
    assert sad.target_grounding == "conflict" and sad.aus == ["AU6", "AU12"]
    assert cited(sad.target) == {"AU6", "AU12"} and sad.target.endswith("<answer>Sadness</answer>")
    untouched = samples["rafdb/train/train_00001"]  # no CSV of its own
    assert untouched.target_grounding == "labels" and untouched.aus == [] and untouched.au_intensity == {}
    assert cited(untouched.target) == set()


def test_a_face_with_no_au_present_is_grounded_in_their_absence(tmp_path):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    layouts.openface_image_csv(tmp_path / "of" / "test_0001_aligned.csv", faces=[(0.9, ())])  # Neutral
    samples, joined, _ = rafdb(root, tmp_path / "of")
    neutral = samples["rafdb/test/test_0001"]
    assert joined == 1 and neutral.aus == [] and neutral.target_grounding == "au" and cited(neutral.target) == set()


def test_affectnet_images_are_joined_by_their_stem(tmp_path):
    root = layouts.affectnet_tree(tmp_path / "affectnet")
    layouts.openface_image_csv(tmp_path / "of" / "img1.csv", faces=[(0.9, ("AU6", "AU12"))])
    options = BuildOptions(root=root)
    report = BuildReport()
    samples = get_builder("affectnet")(options, report)
    assert join(samples, tmp_path / "of", options, report) == 1
    happy = next(s for s in samples if s.image.endswith("1/img1.jpg"))
    assert (
        happy.expression == "Happiness" and happy.target_grounding == "au" and cited(happy.target) == {"AU6", "AU12"}
    )


def test_a_malformed_image_csv_is_named_in_one_line_or_counted_with_skip_bad(tmp_path, capsys):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    openface = tmp_path / "openface"
    bad = layouts.openface_image_csv(openface / "train_00001_aligned.csv", faces=[(0.9, ("AU6",)), (0.8, ())])
    lines = bad.read_text().splitlines()
    lines[2] = lines[2].replace("0.10", "n/a", 1)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"train_00001_aligned\.csv:3: non-numeric OpenFace value"):
        rafdb(root, openface)

    capsys.readouterr()
    code = cli(
        ["data", "build", "rafdb", "--root", str(root), "--out", str(tmp_path / "out"), "--openface", str(openface)]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code != 0 and "Traceback" not in err and len(errors) == 1, err
    assert "train_00001_aligned.csv:3" in errors[0]

    samples, joined, report = rafdb(root, openface, skip_bad=True)
    assert joined == 0 and len(report.bad_lines) == 1 and "train_00001_aligned.csv:3" in report.bad_lines[0]
    assert samples["rafdb/train/train_00001"].target_grounding == "labels"


def test_a_video_csv_for_an_image_is_refused_naming_its_header(tmp_path):
    root = layouts.rafdb_tree(tmp_path / "rafdb")
    layouts.openface_csv(tmp_path / "of" / "train_00001_aligned.csv", 5)  # FeatureExtraction's per-frame format
    with pytest.raises(AnnotationError, match=r"train_00001_aligned\.csv:1: OpenFace CSV in FeatureExtraction"):
        rafdb(root, tmp_path / "of")
