"""The expression-photograph RAF-DB (real faces warped into Happiness, Sadness, Surprise) that the learning test
trains on: its layout, its geometry as dlib measures it again, and the dataset `emoreason data build` makes of it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")

from mllm.samples.expression_photos import (  # noqa: E402
    EXPRESSION_AUS,
    RAFDB_CODE_OF,
    expression_landmarks,
    frame_face,
    interocular,
    source_faces,
    warp_expression,
    write_rafdb_expression_tree,
)

CLASSES = ("Happiness", "Sadness", "Surprise")
SIZE = 160


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """8 training and 4 held-out identities, each in the three classes (36 images before detection)."""
    folder = tmp_path_factory.mktemp("expression_photos")
    summary = write_rafdb_expression_tree(folder / "rafdb", folder / "openface", train_faces=8, test_faces=4, seed=0)
    return folder, summary


@pytest.fixture(scope="module")
def detector():
    from mllm.face import DetectorSettings, FaceDetector

    return FaceDetector(DetectorSettings(min_face_fraction=0.0, detector="hog"))


def test_the_tree_is_rafdb_with_disjoint_identities_and_every_class_in_both_splits(tree):
    folder, summary = tree
    root = folder / "rafdb"
    identities = summary["identities"]
    assert len(identities["train"]) == 8 and len(identities["test"]) == 4
    assert not set(identities["train"]) & set(identities["test"])
    assert "camera" not in identities["train"] + identities["test"]
    by_split = {
        split: {r["identity"] for r in summary["images"] if r["split"] == split} for split in ("train", "test")
    }
    assert by_split["train"] <= set(identities["train"]) and by_split["test"] <= set(identities["test"])
    for split in ("train", "test"):
        assert all(summary["counts"][split][c] > 0 for c in CLASSES), summary["counts"]
    written = sum(n for counts in summary["counts"].values() for n in counts.values())
    skipped = sum(n for counts in summary["skipped"].values() for n in counts.values())
    assert written + skipped == 36 and written >= 30

    lines = (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    assert len(lines) == written
    code_of = {
        f"{Path(r['path']).name.removesuffix('_aligned.jpg')}.jpg": RAFDB_CODE_OF[r["label"]]
        for r in summary["images"]
    }
    for line in lines:
        name, code = line.split()
        assert re.fullmatch(r"train_\d{5}\.jpg|test_\d{4}\.jpg", name) and int(code) == code_of[name]
        stem = name.removesuffix(".jpg")
        image = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        with Image.open(image) as picture:
            assert picture.format == "JPEG" and picture.size == (SIZE, SIZE)
        header = (folder / "openface" / f"{stem}_aligned.csv").read_text().splitlines()[0].split(", ")
        assert header[:2] == ["face", "confidence"] and "AU45_r" in header and "AU28_c" in header
    assert sorted(p.name for p in (folder / "openface").iterdir()) == sorted(
        f"{Path(r['path']).stem}.csv" for r in summary["images"]
    )


def test_the_tree_is_the_same_for_a_seed(tmp_path, tree):
    _, summary = tree
    again = write_rafdb_expression_tree(tmp_path / "r", tmp_path / "o", train_faces=8, test_faces=4, seed=0)
    assert again["counts"] == summary["counts"] and again["identities"] == summary["identities"]
    first, second = summary["images"][0], again["images"][0]
    assert Path(first["path"]).read_bytes() == Path(second["path"]).read_bytes()
    assert Path(first["csv"]).read_text() == Path(second["csv"]).read_text()


def _measure(landmarks_68: np.ndarray) -> dict[str, float]:
    """Mouth-corner lift over the mouth's centre line, brow height over the eye corners, mouth opening; in
    inter-ocular distances, positive = up / open."""
    p = np.asarray(landmarks_68, np.float64)
    d = interocular(p)
    mouth_centre = p[[51, 57, 62, 66], 1].mean()
    return {
        "corners": (mouth_centre - p[[48, 54], 1].mean()) / d,
        "brows": (p[[36, 39, 42, 45], 1].mean() - p[17:27, 1].mean()) / d,
        "opening": (p[66, 1] - p[62, 1]) / d,
    }


def test_dlib_measures_each_class_geometry_on_the_written_images(tree, detector):
    _, summary = tree
    faces = {f.name: f for f in source_faces(detector=detector)}
    neutral = {}
    for name in {r["identity"] for r in summary["images"]}:
        found = detector.detect(frame_face(faces[name].rgb, faces[name].box, SIZE))
        neutral[name] = _measure(found[0].landmarks_68)
    change = {c: [] for c in CLASSES}
    for record in summary["images"]:
        found = detector.detect(np.asarray(Image.open(record["path"]).convert("RGB")))
        assert found, record  # written only when dlib finds the face
        measured = _measure(found[0].landmarks_68)
        change[record["label"]].append({k: v - neutral[record["identity"]][k] for k, v in measured.items()})

    def share(label, key, sign):
        return np.mean([sign * c[key] > 0 for c in change[label]])

    assert share("Happiness", "corners", +1) >= 0.8  # AU12: lip corners up
    assert share("Sadness", "corners", -1) >= 0.8  # AU15: lip corners down
    assert share("Surprise", "brows", +1) >= 0.75  # AU1 + AU2: brows up
    assert share("Surprise", "opening", +1) >= 0.8  # AU26: the jaw drops, the mouth opens
    mean = {c: {k: np.mean([x[k] for x in change[c]]) for k in ("corners", "brows")} for c in CLASSES}
    assert mean["Happiness"]["corners"] > mean["Surprise"]["corners"] > mean["Sadness"]["corners"]
    assert mean["Surprise"]["brows"] > max(mean["Happiness"]["brows"], 0.0)


def test_the_warp_moves_only_the_face_and_follows_strength():
    face = source_faces(lfw=1)[-1]
    rng = np.random.default_rng(0)
    happy = warp_expression(face.rgb, face.landmarks_68, "Happiness", rng=rng)
    changed = np.argwhere((happy != face.rgb).any(axis=2))
    lo, hi = face.landmarks_68.min(axis=0), face.landmarks_68.max(axis=0)
    d = interocular(face.landmarks_68)
    assert (changed[:, ::-1] >= lo - 1.1 * d).all() and (changed[:, ::-1] <= hi + 1.1 * d).all()
    assert np.array_equal(warp_expression(face.rgb, face.landmarks_68, "Happiness", strength=0.0), face.rgb)
    weak = expression_landmarks(face.landmarks_68, "Sadness", strength=0.5) - face.landmarks_68
    strong = expression_landmarks(face.landmarks_68, "Sadness", strength=1.0) - face.landmarks_68
    assert np.allclose(2 * weak, strong)
    with pytest.raises(ValueError, match="Happiness, Sadness, Surprise"):
        warp_expression(face.rgb, face.landmarks_68, "Contempt")


def test_data_build_grounds_every_sample_in_its_class_aus(tree, tmp_path, capsys):
    from datasets import load_from_disk

    from mllm.cli import main
    from mllm.output import parse

    folder, summary = tree
    out = tmp_path / "built"
    args = ["data", "build", "rafdb", "--root", folder / "rafdb", "--out", out, "--openface", folder / "openface"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    built = load_from_disk(str(out))
    rows = [row for split in built for row in built[split]]
    assert len(rows) == len(summary["images"])
    assert Counter(r["split"] for r in rows) == Counter(r["split"] for r in summary["images"])
    for row in rows:
        label = row["expression"]
        assert row["target_grounding"] == "au", row["target"]
        assert row["aus"] == list(EXPRESSION_AUS[label])
        assert set(re.findall(r"\bAU\d+\b", row["target"])) == set(EXPRESSION_AUS[label])
        parsed = parse(row["target"], "expr", "basic7")
        assert parsed.ok and parsed.answer == label, row["target"]


def test_the_fast_piecewise_affine_map_is_skimages():
    from skimage.transform import PiecewiseAffineTransform

    from mllm.samples.expression_photos import _piecewise_affine

    rng = np.random.default_rng(1)
    frame = np.array([[0, 0], [99, 0], [0, 99], [99, 99], [50, 0], [0, 50], [99, 50], [50, 99]], np.float64)
    moved = np.vstack([rng.uniform(20, 80, (12, 2)), frame])
    original = moved + np.vstack([rng.normal(0, 2, (12, 2)), np.zeros_like(frame)])
    grid = np.stack(np.meshgrid(np.arange(100.0), np.arange(100.0)), axis=-1).reshape(-1, 2)
    reference = PiecewiseAffineTransform.from_estimate(moved, original)(grid)
    assert np.allclose(_piecewise_affine(moved, original)(grid), reference, atol=1e-6)
