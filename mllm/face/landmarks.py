"""Face detection and 68-point landmarks with dlib (HOG detector, iBUG shape predictor from face-recognition-models).

>>> faces = FaceDetector().detect(rgb_image)        # doctest: +SKIP
>>> faces[0].primary, faces[0].landmarks_68.shape
(True, (68, 2))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from mllm.face.regions import LEFT_EYE, NUM_LANDMARKS, OUTER_LIPS, RIGHT_EYE

# dlib's HOG detector scans an 80x80 window: smaller faces are found only after upscaling.
DLIB_WINDOW_PX = 80


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are searched for.

    `min_face_fraction`: the smallest face to find, as a fraction of the frame's shorter side. Frames are
    downscaled before detection so that such a face just fills dlib's 80 px window; 0 means full resolution.
    `upsample`: dlib's extra pyramid upsampling steps (each finds faces half as large, at about 4x the cost).
    `min_score`: detections scoring below this are dropped (dlib's own cut is 0; its weak hits are mostly
    false positives on clothing and texture).
    """

    min_face_fraction: float = 0.25
    upsample: int = 0
    min_score: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction must be in [0, 1], got {self.min_face_fraction}")
        if self.upsample not in (0, 1, 2):
            raise ValueError(f"upsample must be 0, 1 or 2, got {self.upsample}")

    def scale_for(self, height: int, width: int) -> float:
        min_face = self.min_face_fraction * min(height, width)
        return 1.0 if min_face <= 0 else min(1.0, DLIB_WINDOW_PX / min_face)


@dataclass
class Face:
    """One face: box (x0, y0, x1, y1) in image pixels, 68 landmarks (x, y), detector score, primary flag."""

    box: np.ndarray
    landmarks_68: np.ndarray
    score: float = 0.0
    primary: bool = False

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@cache
def _dlib_models():
    import dlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports the deprecated pkg_resources
        import face_recognition_models

    return (
        dlib,
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(face_recognition_models.pose_predictor_model_location()),
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class FaceDetector:
    """dlib's detector on a downscaled frame and the 68-point predictor on the full-resolution frame."""

    def __init__(self, settings: DetectorSettings | None = None):
        self.settings = settings or DetectorSettings()
        self._dlib, self._detector, self._predictor = _dlib_models()
        self.detect_calls = 0  # counted so callers (and tests) can see when detection ran

    def detect_boxes(self, rgb: np.ndarray, near: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
        """Face boxes in full-resolution pixels with detector scores, largest first.

        `near`: a box where a face is expected. Only the region around it (twice its size each way) is
        searched, scaled so that such a face is about 1.2x dlib's window: a fraction of a full-frame search.
        """
        self.detect_calls += 1
        height, width = rgb.shape[:2]
        x_off = y_off = 0
        if near is None:
            scale = self.settings.scale_for(height, width)
        else:
            side = max(near[2] - near[0], near[3] - near[1])
            x_off, y_off = int(max(0, near[0] - side)), int(max(0, near[1] - side))
            rgb = rgb[y_off : int(min(height, near[3] + side)), x_off : int(min(width, near[2] + side))]
            scale = min(1.0, 1.2 * DLIB_WINDOW_PX / max(side, 1.0))
        small = rgb
        if scale < 1.0:
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        rects, scores, _ = self._detector.run(small, self.settings.upsample, self.settings.min_score)
        offset = np.array([x_off, y_off, x_off, y_off], dtype=np.float64)
        boxes = [
            (np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64) / scale + offset, float(s))
            for r, s in zip(rects, scores, strict=True)
        ]
        for box, _ in boxes:
            np.clip(box, 0, [width, height, width, height], out=box)
        boxes = [(b, s) for b, s in boxes if b[2] - b[0] > 1 and b[3] - b[1] > 1]
        return sorted(boxes, key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))

    def landmarks(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 68 points (x, y) in pixels for the face in `box`."""
        rect = self._dlib.rectangle(
            int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1
        )
        shape = self._predictor(rgb, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32).reshape(NUM_LANDMARKS, 2)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an image, largest first, the largest flagged `primary`. No face gives an empty list."""
        faces = []
        for box, score in self.detect_boxes(rgb):
            points = self.landmarks(rgb, box)
            faces.append(Face(box=enclosing_box(box, points), landmarks_68=points, score=score))
        if faces:
            faces[0].primary = True
        return faces


def enclosing_box(box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The detector's box grown to hold every landmark (dlib's box often cuts the chin and jaw)."""
    return np.concatenate([np.minimum(box[:2], points.min(axis=0)), np.maximum(box[2:], points.max(axis=0))])


def eye_centres(landmarks_68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject's right eye, subject's left eye) centres; the right eye is on the image's left."""
    return landmarks_68[list(RIGHT_EYE)].mean(axis=0), landmarks_68[list(LEFT_EYE)].mean(axis=0)


def mouth_centre(landmarks_68: np.ndarray) -> np.ndarray:
    return landmarks_68[list(OUTER_LIPS)].mean(axis=0)
