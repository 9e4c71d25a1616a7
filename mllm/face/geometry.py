"""Affine geometry for the detection cascade: rotate a frame to search it for tilted faces, cut an upright patch
around a tilted face for the landmark predictor, and map points back.

Angles are degrees in image coordinates (y down), so a positive angle turns content clockwise on screen. A face's
`roll` is the angle of the line from its right eye (image left) to its left eye: 0 upright, positive when the eye on
the image's right is lower (the head turned clockwise on screen); turning the frame by -roll makes it upright.

    >>> matrix, size = rotation_canvas(640, 360, 25.0)     # frame -> rotated canvas holding all of it
    >>> canvas = warp(rgb, matrix, size)                    # doctest: +SKIP
    >>> apply(invert(matrix), [[100.0, 50.0]])              # canvas points back in the frame  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mllm.face.regions import LEFT_EYE, RIGHT_EYE

# Below this tilt the predictor is run on the frame directly: dlib's own training data covers it.
MIN_ROLL_DEGREES = 10.0


def rotation(degrees: float, centre) -> np.ndarray:
    """(2, 3) matrix turning points by `degrees` about `centre`."""
    a = np.deg2rad(degrees)
    cos, sin = np.cos(a), np.sin(a)
    r = np.array([[cos, -sin], [sin, cos]])
    c = np.asarray(centre, dtype=np.float64)
    return np.hstack([r, (c - r @ c)[:, None]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for (2, 3) matrices."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def invert(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]


def apply(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` resampled (bilinear) onto a (width, height) canvas through `matrix` (frame -> canvas); outside the
    frame is filled with the frame's mean colour, so the canvas edge is no strong gradient for HOG."""
    fill = tuple(int(v) for v in rgb[::8, ::8].reshape(-1, rgb.shape[-1] if rgb.ndim == 3 else 1).mean(axis=0))
    image = Image.fromarray(rgb)
    inverse = invert(matrix)  # PIL maps canvas pixels back to frame pixels
    out = image.transform(
        size,
        Image.AFFINE,
        data=inverse.reshape(-1),
        resample=Image.BILINEAR,
        fillcolor=fill if rgb.ndim == 3 else fill[0],
    )
    return np.asarray(out)


def rotation_canvas(width: int, height: int, degrees: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The matrix turning a (width, height) frame by `degrees` and the canvas size that holds all of it."""
    turn = rotation(degrees, (width / 2, height / 2))
    corners = apply(turn, [[0, 0], [width, 0], [0, height], [width, height]])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    turn[:, 2] -= lo
    size = (int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1])))
    return turn, size


def roll_degrees(landmarks_68: np.ndarray) -> float:
    """The tilt of the eye line, degrees (0 for an upright face)."""
    right = landmarks_68[list(RIGHT_EYE)].mean(axis=0)
    left = landmarks_68[list(LEFT_EYE)].mean(axis=0)
    return float(np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0])))


def effective_roll(landmarks_68: np.ndarray) -> float:
    """The roll worth correcting for: 0 below `MIN_ROLL_DEGREES`, so upright faces take the direct path."""
    roll = roll_degrees(landmarks_68)
    return roll if np.isfinite(roll) and abs(roll) >= MIN_ROLL_DEGREES else 0.0


def box_corners(box: np.ndarray, roll: float) -> np.ndarray:
    """The 4 corners of `box` (given upright, centred on the face) turned by `roll` about its centre."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    return apply(rotation(roll, ((x0 + x1) / 2, (y0 + y1) / 2)), corners) if roll else corners


def upright_box(points: np.ndarray, roll: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) extents of `points` seen with the face turned upright about their mean, and that mean."""
    centre = points.mean(axis=0)
    upright = apply(rotation(-roll, centre), points) if roll else points
    return np.concatenate([upright.min(axis=0), upright.max(axis=0)]), centre
