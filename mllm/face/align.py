"""Similarity-aligned face crops: eyes level, at a fixed place and distance, landmarks mapped into the crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mllm.face.landmarks import eye_centres


@dataclass
class AlignedFace:
    crop: np.ndarray  # (size, size, 3) uint8
    landmarks_01: np.ndarray  # (68, 2) in crop coordinates divided by size, clipped to [0, 1]
    matrix: np.ndarray  # (2, 3) similarity transform from image to crop pixels


def similarity_matrix(
    landmarks_68: np.ndarray, size: int, eye_y: float = 0.38, eye_distance: float = 0.32
) -> np.ndarray:
    """(2, 3) matrix taking image pixels to crop pixels so that the eye centres land on a horizontal line at
    `eye_y * size`, `eye_distance * size` apart, centred horizontally. These defaults keep the jaw and chin of a
    frontal face inside the crop."""
    right_eye, left_eye = eye_centres(np.asarray(landmarks_68, dtype=np.float64))
    delta = left_eye - right_eye
    distance = float(np.hypot(*delta))
    if distance < 1e-3:
        raise ValueError("eye centres coincide: landmarks are degenerate")
    scale = eye_distance * size / distance
    angle = np.arctan2(delta[1], delta[0])
    cos, sin = scale * np.cos(-angle), scale * np.sin(-angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    centre = (right_eye + left_eye) / 2
    target = np.array([0.5 * size, eye_y * size])
    return np.hstack([rotation, (target - rotation @ centre)[:, None]])


def align_face(rgb: np.ndarray, landmarks_68: np.ndarray, size: int = 112, **placement) -> AlignedFace:
    if size < 8:
        raise ValueError(f"crop size must be >= 8, got {size}")
    matrix = similarity_matrix(landmarks_68, size, **placement)
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]  # PIL maps output pixels back to input pixels
    crop = Image.fromarray(rgb).transform(
        (size, size), Image.AFFINE, data=inverse.reshape(-1), resample=Image.BILINEAR
    )
    mapped = np.asarray(landmarks_68, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return AlignedFace(
        crop=np.asarray(crop),
        landmarks_01=np.clip(mapped / size, 0.0, 1.0).astype(np.float32),
        matrix=matrix,
    )
