"""Landmarks on face crops that are already aligned, such as ABAW's `cropped_aligned/<video>/00001.jpg` (112x112).

The face fills such a crop, so no detection runs: dlib's 68-point predictor is given the whole crop as the face box.
On crops aligned as `align_face` aligns them, this places the points within about 5% of the inter-ocular distance
of where they were (a detected box does better, about 2%, but costs a detection and can miss on small crops).
Results go to the same face cache as every other face result, keyed by the crop's content.

    >>> points = crop_landmarks("cropped_aligned/vid1/00001.jpg")     # doctest: +SKIP
    >>> points.shape
    (68, 2)
"""

from __future__ import annotations

import numpy as np

from mllm.face.landmarks import FaceDetector
from mllm.face.pipeline import FaceCache, content_hash
from mllm.media import DEFAULT_LIMITS, MediaLimits, MediaSource, load_image

# Part of the cache key: change it when the way crop landmarks are computed changes.
CROP_SETTINGS = {"box": "whole crop", "predictor": "dlib 68-point"}


def _store(cache: FaceCache | bool | None) -> FaceCache | None:
    if cache is True or cache is None:
        return FaceCache()
    return cache or None


def crop_landmarks(
    source: MediaSource,
    *,
    image: np.ndarray | None = None,
    cache: FaceCache | bool | None = True,
    detector: FaceDetector | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """The 68 landmarks (x, y) in crop pixels of an aligned face crop, the whole crop taken as the face box.

    `image`: the crop already decoded from `source` (RGB uint8), to avoid decoding it twice; a cache hit decodes
    nothing.
    """
    store = _store(cache)
    key = None
    if store is not None:
        key = store.key(content_hash(source), kind="aligned_crop", settings=CROP_SETTINGS)
        if (arrays := store.get(key)) is not None and arrays.get("landmarks_68", np.zeros(0)).shape == (68, 2):
            return arrays["landmarks_68"].astype(np.float32)
    rgb = image if image is not None else load_image(source, limits)
    height, width = rgb.shape[:2]
    points = (detector or FaceDetector()).landmarks(
        np.ascontiguousarray(rgb), np.array([0, 0, width, height], dtype=np.float64)
    )
    if store is not None:
        store.put(key, {"landmarks_68": points})
    return points
