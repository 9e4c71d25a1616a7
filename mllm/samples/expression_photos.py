"""Expression photographs: real faces with their expression geometry changed, as a small RAF-DB.

The faces are the real photographs shipped inside scikit-image (`mllm.samples.synthetic.face_photos`: the astronaut and
the LFW faces; the cameraman is left out, dlib's HOG detector misses him). Each face's 68 dlib landmarks are moved
along an EMFACS prototype's geometry (Happiness: AU6 + AU12, Sadness: AU1 + AU4 + AU15, Surprise: AU1 + AU2 + AU5
+ AU26) by a piecewise-affine warp anchored on a frame of fixed points around the face, so nothing else in the
picture changes. Every identity is warped into every class and used in one split only, so the class is carried by
the geometry alone and test identities are never seen in training.

`write_rafdb_expression_tree` writes the official RAF-DB basic layout (EmoLabel/list_patition_label.txt,
Image/aligned/<name>_aligned.jpg) and, beside it, one OpenFace 2.0 FaceLandmarkImg CSV per image with the class's
AUs present (weak AU labels, as OpenFace would give them), for `emoreason data build rafdb ROOT --openface DIR`:

    from mllm.samples.expression_photos import write_rafdb_expression_tree
    summary = write_rafdb_expression_tree("rafdb", "openface", train_faces=40, test_faces=12)

scikit-image is a dev dependency: it is imported only when a face is warped or the photographs are loaded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_builders.images import RAFDB_CODES

# The AUs each class shows (its EMFACS prototype), named as OpenFace names them.
EXPRESSION_AUS: dict[str, tuple[str, ...]] = {
    "Happiness": ("AU6", "AU12"),
    "Sadness": ("AU1", "AU4", "AU15"),
    "Surprise": ("AU1", "AU2", "AU5", "AU26"),
}
# RAF-DB's label codes (1 Surprise ... 7 Neutral), by label: the builder's own table, inverted.
RAFDB_CODE_OF = {label: code for code, label in RAFDB_CODES.items()}
# What OpenFace 2.0 outputs: intensities for 17 AUs, presence for those and AU28 (lip suck).
OPENFACE_AUS_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
OPENFACE_AUS_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)

# Landmark displacements per class, in inter-ocular distances: (outward, up). "Outward" is away from the face's
# midline (negative: towards it), "up" along the face's own vertical axis. Each entry lists the subject's right
# point (image left) and its mirror; None where the point is on the midline.
_Moves = list[tuple[int, int | None, float, float]]
_GEOMETRY: dict[str, _Moves] = {
    "Happiness": [
        # AU12: lip corners pulled up and out; the lips follow, less towards the middle.
        (48, 54, 0.10, 0.13),
        (60, 64, 0.08, 0.11),
        (49, 53, 0.05, 0.07),
        (59, 55, 0.05, 0.08),
        (61, 63, 0.02, 0.04),
        (67, 65, 0.02, 0.05),
        (50, 52, 0.02, 0.03),
        (58, 56, 0.02, 0.04),
        (51, None, 0.0, 0.02),
        (62, None, 0.0, 0.02),
        (57, None, 0.0, 0.02),
        (66, None, 0.0, 0.02),
        # AU6: cheeks raised, pushing the lower lids up and widening the nostrils a little.
        (41, 46, 0.0, 0.05),
        (40, 47, 0.0, 0.05),
        (31, 35, 0.02, 0.03),
    ],
    "Sadness": [
        # AU1 + AU4: inner brow ends raised and drawn together, the outer ends a little lower (the oblique brow).
        (21, 22, -0.05, 0.13),
        (20, 23, -0.02, 0.07),
        (19, 24, 0.0, 0.02),
        (18, 25, 0.0, -0.01),
        (17, 26, 0.0, -0.03),
        # AU15: lip corners pulled down.
        (48, 54, -0.02, -0.13),
        (60, 64, -0.02, -0.11),
        (49, 53, 0.0, -0.06),
        (59, 55, 0.0, -0.07),
        (61, 63, 0.0, -0.03),
        (67, 65, 0.0, -0.03),
        (50, 52, 0.0, -0.02),
        (58, 56, 0.0, -0.02),
    ],
    "Surprise": [
        # AU1 + AU2: the whole brows raised.
        (17, 26, 0.0, 0.18),
        (18, 25, 0.0, 0.20),
        (19, 24, 0.0, 0.21),
        (20, 23, 0.0, 0.20),
        (21, 22, 0.0, 0.18),
        # AU5: upper lids raised.
        (37, 44, 0.0, 0.05),
        (38, 43, 0.0, 0.05),
        # AU26: the jaw drops; the lower lip and chin go down, the corners in a little (an oval mouth).
        (48, 54, -0.03, -0.10),
        (60, 64, -0.03, -0.10),
        (49, 53, 0.0, -0.02),
        (59, 55, -0.02, -0.27),
        (58, 56, 0.0, -0.32),
        (57, None, 0.0, -0.34),
        (67, 65, 0.0, -0.29),
        (66, None, 0.0, -0.31),
        (4, 12, 0.0, -0.08),
        (5, 11, 0.0, -0.18),
        (6, 10, 0.0, -0.28),
        (7, 9, 0.0, -0.33),
        (8, None, 0.0, -0.35),
    ],
}
# The part each point belongs to: per-sample variation scales a part as a whole (a bigger smile, not a lopsided
# one). The jaw moves with the mouth.
_PART = {
    **dict.fromkeys(range(0, 17), "mouth"),
    **dict.fromkeys(range(17, 27), "brows"),
    **dict.fromkeys(range(27, 36), "nose"),
    **dict.fromkeys(range(36, 48), "eyes"),
    **dict.fromkeys(range(48, 68), "mouth"),
}


def interocular(landmarks_68: np.ndarray) -> float:
    """The distance between the eye centres, in pixels: the unit the displacements are given in."""
    points = np.asarray(landmarks_68, np.float64)
    return float(np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0)))


def expression_landmarks(
    landmarks_68: np.ndarray, expression: str, strength: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Where the 68 landmarks go for `expression`: the class's displacements scaled by the inter-ocular distance
    and `strength`, turned with the face's roll; with `rng`, each region's amount varies by +-15 % and each point
    by a little noise (0.01 inter-ocular distances)."""
    if expression not in _GEOMETRY:
        raise ValueError(f"unknown expression {expression!r}; valid: {', '.join(_GEOMETRY)}")
    points = np.asarray(landmarks_68, np.float64)
    right_eye, left_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    across = (left_eye - right_eye) / max(np.linalg.norm(left_eye - right_eye), 1e-6)  # image-right unit vector
    up = np.array([across[1], -across[0]])  # perpendicular, pointing up the face (image y grows downwards)
    unit = interocular(points) * strength
    scale = {name: 1.0 for name in ("brows", "eyes", "mouth", "nose")}
    if rng is not None:
        scale = {name: float(rng.uniform(0.85, 1.15)) for name in scale}
    moved = points.copy()
    for right, left, outward, upward in _GEOMETRY[expression]:
        for index, side in ((right, -1.0), (left, 1.0)):
            if index is None:
                continue
            amount = unit * scale[_PART[index]]
            moved[index] += amount * (side * outward * across + upward * up)
            if rng is not None:
                moved[index] += rng.normal(0.0, 0.01 * unit, 2)
    return moved


def _frame(landmarks_68: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fixed anchor points on a box around the face (room above for raised brows and below for a dropped jaw), and
    the box (x0, y0, x1, y1) clipped to the image: the warp changes nothing outside it."""
    d = interocular(landmarks_68)
    lo, hi = landmarks_68.min(axis=0), landmarks_68.max(axis=0)
    height, width = shape
    x0, y0 = int(max(0, np.floor(lo[0] - 0.7 * d))), int(max(0, np.floor(lo[1] - 1.0 * d)))
    x1, y1 = int(min(width, np.ceil(hi[0] + 0.7 * d))), int(min(height, np.ceil(hi[1] + 0.8 * d)))
    xs, ys = np.linspace(x0, x1 - 1, 7), np.linspace(y0, y1 - 1, 7)
    border = [(x, y) for x in xs for y in (y0, y1 - 1)] + [(x, y) for y in ys[1:-1] for x in (x0, x1 - 1)]
    return np.array(border, np.float64), (x0, y0, x1, y1)


def warp_expression(
    rgb: np.ndarray,
    landmarks_68: np.ndarray,
    expression: str,
    strength: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`rgb` with the face's landmarks moved along `expression`'s geometry by a piecewise-affine warp; pixels
    outside a box around the face are untouched. For Surprise the mouth opened by the dropped jaw is filled dark,
    as a mouth's interior looks."""
    from skimage.transform import warp

    source = np.asarray(landmarks_68, np.float64)
    target = expression_landmarks(source, expression, strength, rng)
    anchors, (x0, y0, x1, y1) = _frame(source, rgb.shape[:2])
    offset = np.array([x0, y0], np.float64)
    # warp() maps output pixels back to input pixels: from the moved points to the original ones.
    inverse = _piecewise_affine(np.vstack([target, anchors]) - offset, np.vstack([source, anchors]) - offset)
    crop = rgb[y0:y1, x0:x1].astype(np.float64)
    warped = warp(crop, inverse, order=1, mode="edge", preserve_range=True)
    out = rgb.copy()
    out[y0:y1, x0:x1] = np.clip(np.round(warped), 0, 255).astype(rgb.dtype)
    if expression == "Surprise":
        out = _fill_mouth(out, target)
    return out


def _piecewise_affine(points_from: np.ndarray, points_to: np.ndarray):
    """A function mapping (N, 2) xy coordinates by the affine map of the Delaunay triangle of `points_from` they lie
    in (outside every triangle: unchanged). skimage's PiecewiseAffineTransform does the same, but fits each
    triangle with a general estimator and costs about 0.15 s per face; this solves all triangles at once."""
    from scipy.spatial import Delaunay

    mesh = Delaunay(points_from)
    corners_from = np.concatenate([points_from[mesh.simplices], np.ones((len(mesh.simplices), 3, 1))], axis=2)
    # One 3x3 solve per triangle: [x y 1] @ affine = target xy at its three corners.
    affine = np.linalg.solve(corners_from, points_to[mesh.simplices])

    def apply(xy: np.ndarray) -> np.ndarray:
        triangle = mesh.find_simplex(xy)
        inside = triangle >= 0
        out = xy.astype(np.float64)
        chosen = affine[triangle[inside]]
        homogeneous = np.concatenate([xy[inside], np.ones((int(inside.sum()), 1))], axis=1)
        out[inside] = np.einsum("nk,nkj->nj", homogeneous, chosen)
        return out

    return apply


def _fill_mouth(rgb: np.ndarray, landmarks_68: np.ndarray, supersample: int = 4) -> np.ndarray:
    """The inner-lip polygon painted a dark shade of the lips' own colour (grey on a grey photograph), its edge
    anti-aliased."""
    lo = np.floor(landmarks_68[48:60].min(axis=0)).astype(int) - 1
    hi = np.ceil(landmarks_68[48:60].max(axis=0)).astype(int) + 2
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [rgb.shape[1], rgb.shape[0]])
    if (hi <= lo).any():
        return rgb
    box = rgb[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float64)
    colour = 0.3 * box.reshape(-1, box.shape[2]).mean(axis=0)
    mask = Image.new("L", tuple((hi - lo) * supersample), 0)
    inner = [tuple((p - lo + 0.5) * supersample) for p in landmarks_68[60:68]]
    ImageDraw.Draw(mask).polygon(inner, fill=255)
    alpha = np.asarray(mask.resize(tuple(hi - lo), Image.BOX), np.float64)[..., None] / 255.0
    out = rgb.copy()
    out[lo[1] : hi[1], lo[0] : hi[0]] = np.round(alpha * colour + (1 - alpha) * box).astype(rgb.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The faces, and the RAF-DB tree


@dataclass
class SourceFace:
    """A real photograph framed for warping, with its face's dlib box and 68 landmarks."""

    name: str
    rgb: np.ndarray
    box: np.ndarray
    landmarks_68: np.ndarray


def _detector():
    from mllm.face import DetectorSettings, FaceDetector

    # HOG only, at full resolution: the fast stage, and the one a face must pass to be kept.
    return FaceDetector(DetectorSettings(min_face_fraction=0.0, detector="hog"))


def source_faces(lfw: int = 100, detector=None) -> list[SourceFace]:
    """The astronaut (cut to a 240 px square around her face) and the first `lfw` LFW faces, those where dlib's
    HOG detector finds the face (about 84 of the 100 LFW faces), in that order."""
    from mllm.samples.synthetic import face_photos

    detector = detector or _detector()
    faces = []
    for photo in face_photos(lfw=lfw):
        if photo.name == "camera":
            continue
        rgb = photo.rgb
        if photo.name == "astronaut":
            cx, cy = ((photo.box[:2] + photo.box[2:]) / 2).astype(int)
            rgb = np.ascontiguousarray(rgb[max(0, cy - 110) : cy + 130, max(0, cx - 120) : cx + 120])
        found = detector.detect(rgb)
        if found:
            faces.append(SourceFace(photo.name, rgb, found[0].box, found[0].landmarks_68))
    return faces


def frame_face(rgb: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """A square of 1.6x the face box around its centre (edge pixels repeated where it leaves the image), resized to
    `size`: the RAF-DB 'aligned' framing."""
    centre = (box[:2] + box[2:]) / 2
    half = 0.8 * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = int(round(centre[0] - half)), int(round(centre[1] - half))
    side = int(round(2 * half))
    height, width = rgb.shape[:2]
    rows = np.clip(np.arange(y0, y0 + side), 0, height - 1)
    cols = np.clip(np.arange(x0, x0 + side), 0, width - 1)
    crop = rgb[rows][:, cols]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def _jpeg(rgb: np.ndarray, quality: int = 92) -> tuple[bytes, np.ndarray]:
    """The JPEG bytes and the image as decoded from them (what a builder or model will see)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def openface_image_csv(aus: tuple[str, ...], rng: np.random.Generator, landmarks_68: np.ndarray | None = None) -> str:
    """One face's row as OpenFace 2.0's FaceLandmarkImg writes it (`-pose -2Dfp -aus`): `face, confidence`, head
    pose, 2D landmarks, `AUxx_r` intensities (0-5) and `AUxx_c` presences, ", "-separated. `aus` are present
    with intensities around 2.5; the others absent with low intensities."""
    active = {int(a[2:]) for a in aus}
    header = ["face", "confidence", "pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    header += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    header += [f"AU{n:02d}_r" for n in OPENFACE_AUS_R] + [f"AU{n:02d}_c" for n in OPENFACE_AUS_C]
    pose = [rng.normal(0, 10), rng.normal(0, 10), rng.uniform(400, 600)] + list(rng.normal(0, 0.05, 3))
    points = np.zeros((68, 2)) if landmarks_68 is None else np.asarray(landmarks_68, np.float64)
    intensity = [rng.uniform(1.5, 3.5) if n in active else rng.uniform(0.0, 0.4) for n in OPENFACE_AUS_R]
    presence = [1.0 if n in active else 0.0 for n in OPENFACE_AUS_C]
    row = [f"0, {rng.uniform(0.93, 0.98):.3f}"]
    row += [f"{v:.1f}" for v in pose[:3]] + [f"{v:.3f}" for v in pose[3:]]
    row += [f"{v:.1f}" for v in points[:, 0]] + [f"{v:.1f}" for v in points[:, 1]]
    row += [f"{v:.2f}" for v in intensity] + [f"{v:.1f}" for v in presence]
    return ", ".join(header) + "\n" + ", ".join(row) + "\n"


def write_rafdb_expression_tree(
    root: str | Path,
    openface_dir: str | Path,
    classes: tuple[str, ...] = ("Happiness", "Sadness", "Surprise"),
    train_faces: int = 40,
    test_faces: int = 12,
    seed: int = 0,
    strength: float = 1.0,
    image_size: int = 160,
    progress: bool = True,
) -> dict:
    """Write a RAF-DB basic tree of warped real faces under `root` and their OpenFace CSVs in `openface_dir`.

    `train_faces` identities go to train and the next `test_faces` (disjoint) to test, chosen by `seed` from the
    faces dlib finds; each is warped into every class in `classes`. A warped image is written only when dlib's HOG
    detector finds its face again (on the decoded JPEG, centred where it was). Images are numbered in a shuffled
    order, so the number says nothing about the class. Returns a summary: `counts` {split: {class: n}},
    `skipped` (images whose face was lost), `identities` {split: [names]}, `images` (one record per image: path,
    csv, split, label, identity), `root`, `openface_dir`, `label_file`.
    """
    unknown = [c for c in classes if c not in _GEOMETRY]
    if unknown or not classes:
        raise ValueError(f"classes must be some of {', '.join(_GEOMETRY)}; got {list(classes)}")
    root, openface_dir = Path(root), Path(openface_dir)
    detector = _detector()
    faces = source_faces(detector=detector)
    if train_faces + test_faces > len(faces):
        raise ValueError(f"{train_faces} + {test_faces} faces asked for; only {len(faces)} are found by dlib")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    splits = {
        "train": [faces[i] for i in order[:train_faces]],
        "test": [faces[i] for i in order[train_faces:][:test_faces]],
    }
    images_dir = root / "Image" / "aligned"
    images_dir.mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    openface_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "root": str(root),
        "openface_dir": str(openface_dir),
        "label_file": str(root / "EmoLabel" / "list_patition_label.txt"),
        "counts": {split: dict.fromkeys(classes, 0) for split in splits},
        "skipped": {split: dict.fromkeys(classes, 0) for split in splits},
        "identities": {split: [f.name for f in members] for split, members in splits.items()},
        "images": [],
    }
    lines = {split: [] for split in splits}
    from tqdm import tqdm

    bar = tqdm(total=(train_faces + test_faces) * len(classes), unit="photo", desc="expression photos",
               disable=not progress)  # fmt: skip
    for split, members in splits.items():
        jobs = [(face, label) for face in members for label in classes]
        number = 0
        for k in rng.permutation(len(jobs)):
            bar.update()
            face, label = jobs[k]
            warped = warp_expression(face.rgb, face.landmarks_68, label, strength, rng)
            data, decoded = _jpeg(frame_face(warped, face.box, image_size))
            found = detector.detect(decoded)
            centre = np.array([image_size / 2, image_size / 2])
            if not found or np.linalg.norm((found[0].box[:2] + found[0].box[2:]) / 2 - centre) > 0.2 * image_size:
                summary["skipped"][split][label] += 1
                continue
            number += 1
            name = f"{split}_{number:05d}" if split == "train" else f"{split}_{number:04d}"
            image = images_dir / f"{name}_aligned.jpg"
            image.write_bytes(data)
            csv = openface_dir / f"{name}_aligned.csv"
            csv.write_text(openface_image_csv(EXPRESSION_AUS[label], rng, found[0].landmarks_68))
            lines[split].append(f"{name}.jpg {RAFDB_CODE_OF[label]}")
            summary["counts"][split][label] += 1
            summary["images"].append(
                {"path": str(image), "csv": str(csv), "split": split, "label": label, "identity": face.name}
            )
    bar.close()
    listed = [line for split in splits for line in sorted(lines[split])]
    Path(summary["label_file"]).write_text("\n".join(listed) + "\n")
    return summary
