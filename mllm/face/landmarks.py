"""Face detection and 68-point landmarks with dlib: a detection cascade (HOG, HOG on the frame turned by about 25
degrees either way, HOG upsampled, dlib's CNN) and the iBUG shape predictor, all shipped in face-recognition-models.

>>> faces = FaceDetector().detect(rgb_image)        # doctest: +SKIP
>>> faces[0].primary, faces[0].landmarks_68.shape, faces[0].stage
(True, (68, 2), 'hog')
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from mllm.face import geometry
from mllm.face.regions import LEFT_EYE, NUM_LANDMARKS, OUTER_LIPS, RIGHT_EYE

# dlib's HOG detector scans an 80x80 window: smaller faces are found only after upscaling. Its CNN (MMOD) detector
# misses faces much under 80 px too, so both search frames scaled the same way.
DLIB_WINDOW_PX = 80
DETECTORS = ("hog", "cnn", "auto")
# The cascade's stages, cheapest first (ms for a 512x512 photograph on 2 cores: about 40, 2x40, 160, 3,700).
STAGES = ("hog", "rotated", "upsampled", "cnn")
ROTATIONS_DEGREES = (25.0, -25.0)
# The CNN costs about 15 us per pixel here: a frame is downscaled to at most this many pixels before it runs.
CNN_MAX_PIXELS = 640 * 480
# A tilted face is turned upright on a patch before the predictor sees it; the patch holds the face at this many
# pixels (smaller faces at their own size) with half a face of margin each side (the predictor samples beyond the
# face's box: a tilted face with a covered brow is lost with less), so its cost does not grow with the face: a face
# filling half a 360 px phone frame costs what a 120 px one does (the points move by about 1.5% of the distance
# between the eyes on average).
ROLLED_FACE_PX = 120.0
ROLLED_MARGIN = 0.5
# Where dlib's HOG box lies relative to its CNN box (fractions of the CNN box's side, measured on the faces shipped
# with scikit-image): the 68-point predictor was trained on HOG boxes, so CNN boxes are mapped onto them.
_CNN_TO_HOG = np.array([0.02, 0.053, 1.041, 1.08])


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are searched for.

    `min_face_fraction`: the smallest face to find, as a fraction of the frame's shorter side. Frames are
    downscaled before detection so that such a face just fills dlib's 80 px window; 0 means full resolution.
    `upsample`: dlib's extra pyramid upsampling steps (each finds faces half as large, at about 4x the cost).
    `min_score`: detections scoring below this are dropped (dlib's own cut is 0; its weak hits are mostly
    false positives on clothing and texture).
    `detector`: "hog" (dlib's HOG detector only, fast), "cnn" (dlib's CNN only: finds tilted, turned and partly
    covered faces, about 100x the cost), "auto" (HOG; on an image where it finds no face, the frame turned by
    +-25 degrees, then upsampled when searched at full resolution, then the CNN; on a video, the same retries while
    the subject is lost, rate-limited by `TrackerSettings`).
    """

    min_face_fraction: float = 0.25
    upsample: int = 0
    min_score: float = 0.3
    detector: str = "auto"

    def __post_init__(self):
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction must be in [0, 1], got {self.min_face_fraction}")
        if self.upsample not in (0, 1, 2):
            raise ValueError(f"upsample must be 0, 1 or 2, got {self.upsample}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}; got {self.detector!r}")

    def scale_for(self, height: int, width: int) -> float:
        min_face = self.min_face_fraction * min(height, width)
        return 1.0 if min_face <= 0 else min(1.0, DLIB_WINDOW_PX / min_face)

    @property
    def first_stage(self) -> str:
        """The stage every search starts with (and the only one a region search near a known face uses)."""
        return "cnn" if self.detector == "cnn" else "hog"

    def stages(self) -> tuple[str, ...]:
        """The cascade for a still image: each stage runs only when the ones before it found nothing."""
        return STAGES if self.detector == "auto" else (self.first_stage,)


@dataclass
class Face:
    """One face: box (x0, y0, x1, y1) in image pixels, 68 landmarks (x, y), detector score, primary flag, and the
    cascade stage that found it."""

    box: np.ndarray
    landmarks_68: np.ndarray
    score: float = 0.0
    primary: bool = False
    stage: str = "hog"

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@dataclass
class Detection:
    """A detector hit: `box` is the face's box as seen upright, centred on the face, in frame pixels; `roll` the
    tilt (degrees) the stage found it at (0 unless the `rotated` stage found it)."""

    box: np.ndarray
    score: float
    stage: str
    roll: float = 0.0


# dlib's detectors and predictor are shared by every thread, and dlib runs them without Python's lock: two threads
# in one of them at once corrupt its memory (the server renders requests side by side). Each call holds this.
DLIB_LOCK = threading.Lock()


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


@cache
def _cnn_model():
    """dlib's CNN face detector, loaded on first use only (most runs never need it)."""
    dlib = _dlib_models()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition_models

    return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def _rect_box(rect) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)


class FaceDetector:
    """The detection cascade on a downscaled frame and the 68-point predictor on the full-resolution frame.

    `detect_calls` counts searches; `stage_runs`, `stage_hits` and `stage_seconds` count each stage's runs, the
    runs that found a face, and the time they took (for benchmarks and tests).
    """

    def __init__(self, settings: DetectorSettings | None = None):
        self.settings = settings or DetectorSettings()
        self._dlib, self._detector, self._predictor = _dlib_models()
        self.rolled_face_px, self.rolled_margin = ROLLED_FACE_PX, ROLLED_MARGIN  # the upright patch (see above)
        self.detect_calls = 0  # counted so callers (and tests) can see when detection ran
        self.stage_runs: Counter = Counter()
        self.stage_hits: Counter = Counter()
        self.stage_seconds: Counter = Counter()

    # -- detection ------------------------------------------------------------------------------------------

    def search(
        self,
        rgb: np.ndarray,
        stages: tuple[str, ...] | None = None,
        near: np.ndarray | None = None,
        rotations: tuple[float, ...] = ROTATIONS_DEGREES,
    ) -> list[Detection]:
        """Run `stages` (default: the first stage only) in order until one finds a face; largest first.

        `near`: a box where a face is expected. Only the region around it (twice its size each way) is searched,
        scaled so that such a face is about 1.2x dlib's window: a fraction of a full-frame search.
        `rotations`: the angles the `rotated` stage turns the frame by (a tracker alternates them, one per retry).
        """
        self.detect_calls += 1
        stages = stages or (self.settings.first_stage,)
        for name in stages:
            if name not in STAGES:
                raise ValueError(f"unknown detection stage {name!r}; valid: {', '.join(STAGES)}")
        height, width = rgb.shape[:2]
        offset = np.zeros(2)
        if near is None:
            scale = self.settings.scale_for(height, width)
        else:
            side = max(near[2] - near[0], near[3] - near[1])
            x_off, y_off = int(max(0, near[0] - side)), int(max(0, near[1] - side))
            rgb = rgb[y_off : int(min(height, near[3] + side)), x_off : int(min(width, near[2] + side))]
            scale = min(1.0, 1.2 * DLIB_WINDOW_PX / max(side, 1.0))
            offset = np.array([x_off, y_off], dtype=np.float64)
        # dlib's detectors misread arrays that are not C-contiguous (a region cut from a frame, or a decoded frame
        # whose rows are padded: 426 px wide video) and find nothing in them; copy those (cheap, and rare).
        small = np.ascontiguousarray(_resize(rgb, scale))
        for name in stages:
            if name == "upsampled" and (scale < 1.0 or self.settings.upsample >= 2):
                continue  # only a full-resolution search may look for faces smaller than asked for
            start = time.perf_counter()
            found = self._run_stage(name, rgb, small, scale, rotations)
            self.stage_seconds[name] += time.perf_counter() - start
            self.stage_runs[name] += 1
            found = [d for d in found if d.box[2] - d.box[0] > 1 and d.box[3] - d.box[1] > 1]
            if found:
                self.stage_hits[name] += 1
                for d in found:
                    d.box[:2] += offset
                    d.box[2:] += offset
                return sorted(found, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        return []

    def _run_stage(
        self, name: str, rgb: np.ndarray, small: np.ndarray, scale: float, rotations=ROTATIONS_DEGREES
    ) -> list[Detection]:
        min_score, upsample = self.settings.min_score, self.settings.upsample
        if name in ("hog", "upsampled"):
            steps = upsample + (name == "upsampled")
            with DLIB_LOCK:
                rects, scores, _ = self._detector.run(small, steps, min_score)
            return [Detection(_rect_box(r) / scale, float(s), name) for r, s in zip(rects, scores, strict=True)]
        if name == "rotated":
            for degrees in rotations:
                matrix, size = geometry.rotation_canvas(small.shape[1], small.shape[0], degrees)
                canvas = geometry.warp(small, matrix, size)
                with DLIB_LOCK:
                    rects, scores, _ = self._detector.run(canvas, upsample, min_score)
                back = geometry.invert(matrix)
                # Turning the frame by `degrees` made the face upright: its own tilt is the opposite.
                hits = [
                    self._rotated_hit(_rect_box(r), back, scale, -degrees, s)
                    for r, s in zip(rects, scores, strict=True)
                ]
                # Hits centred in the canvas's filled corners are not in the frame at all.
                height, width = rgb.shape[:2]
                hits = [
                    h
                    for h in hits
                    if 0 <= (h.box[0] + h.box[2]) / 2 < width and 0 <= (h.box[1] + h.box[3]) / 2 < height
                ]
                if hits:
                    return hits
            return []
        # The CNN: on a copy of at most CNN_MAX_PIXELS; its boxes mapped to where HOG would put them.
        cnn_scale = min(1.0, np.sqrt(CNN_MAX_PIXELS / max(1, small.shape[0] * small.shape[1])))
        resized = _resize(small, cnn_scale)
        with DLIB_LOCK:
            hits = _cnn_model()(resized, upsample)
        found = []
        for hit in hits:
            if hit.confidence < min_score:
                continue
            box = _rect_box(hit.rect)
            side = box[2] - box[0]
            box = box[[0, 1, 0, 1]] + _CNN_TO_HOG * side
            found.append(Detection(box / (scale * cnn_scale), float(hit.confidence), "cnn"))
        return found

    @staticmethod
    def _rotated_hit(box: np.ndarray, back: np.ndarray, scale: float, roll: float, score: float) -> Detection:
        centre = geometry.apply(back, [(box[:2] + box[2:]) / 2])[0] / scale
        half = (box[2:] - box[:2]) / (2 * scale)
        return Detection(np.concatenate([centre - half, centre + half]), float(score), "rotated", roll)

    def detect_boxes(self, rgb: np.ndarray, near: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
        """Face boxes in full-resolution pixels with detector scores, largest first, from the first stage alone
        (HOG, or the CNN when `detector="cnn"`). `near`: search only around this box (see `search`)."""
        height, width = rgb.shape[:2]
        boxes = []
        for d in self.search(rgb, near=near):
            np.clip(d.box, 0, [width, height, width, height], out=d.box)
            if d.box[2] - d.box[0] > 1 and d.box[3] - d.box[1] > 1:
                boxes.append((d.box, d.score))
        return boxes

    # -- landmarks ------------------------------------------------------------------------------------------

    def landmarks(self, rgb: np.ndarray, box: np.ndarray, roll: float = 0.0) -> np.ndarray:
        """The 68 points (x, y) in pixels for the face in `box`. `roll` (degrees): the face's tilt; past a few
        degrees the predictor runs on a patch turned upright around the face (the face at `rolled_face_px` at
        most), and the points are mapped back."""
        if abs(roll) < 1e-6:
            # The predictor reads about 7,500 pixels whatever the face's size; its cost is walking its 100 MB of
            # trees. It gets the face with a half-box margin on each side (its pixel samples stay inside it; the
            # points are the same as on the whole frame), so a frame with padded rows is never copied whole.
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            margin = max(x1 - x0, y1 - y0) // 2 + 8
            height, width = rgb.shape[:2]
            cx0, cy0 = max(0, x0 - margin), max(0, y0 - margin)
            region = np.ascontiguousarray(rgb[cy0 : min(height, y1 + margin), cx0 : min(width, x1 + margin)])
            rect = self._dlib.rectangle(x0 - cx0, y0 - cy0, x1 - cx0 - 1, y1 - cy0 - 1)
            with DLIB_LOCK:
                shape = self._predictor(region, rect)
            return self._points(shape) + np.array([cx0, cy0], np.float32)
        centre = (np.asarray(box[:2], np.float64) + box[2:]) / 2
        size = np.maximum(np.asarray(box[2:], np.float64) - box[:2], 1.0)
        zoom = min(1.0, self.rolled_face_px / size.max())
        side = int(np.ceil((1 + 2 * self.rolled_margin) * zoom * size.max()))
        # frame -> patch: the face's centre to the patch's centre, turned upright, scaled by `zoom`.
        to_patch = geometry.compose(
            np.array([[zoom, 0.0, side / 2], [0.0, zoom, side / 2]]),
            geometry.compose(
                geometry.rotation(-roll, (0.0, 0.0)), np.array([[1.0, 0, -centre[0]], [0, 1.0, -centre[1]]])
            ),
        )
        # Only the region the patch can see is cut from the frame, so a large frame is never copied whole.
        reach = size.max() * 1.5
        height, width = rgb.shape[:2]
        x0, y0 = int(max(0, centre[0] - reach)), int(max(0, centre[1] - reach))
        x1, y1 = int(min(width, centre[0] + reach + 1)), int(min(height, centre[1] + reach + 1))
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        patch = geometry.warp(region, geometry.compose(to_patch, np.array([[1.0, 0, x0], [0, 1.0, y0]])), (side, side))
        lo, hi = side / 2 - zoom * size / 2, side / 2 + zoom * size / 2
        rect = self._dlib.rectangle(int(round(lo[0])), int(round(lo[1])), int(round(hi[0])) - 1, int(round(hi[1])) - 1)
        with DLIB_LOCK:
            shape = self._predictor(patch, rect)
        points = self._points(shape)
        return geometry.apply(geometry.invert(to_patch), points).astype(np.float32)

    @staticmethod
    def _points(shape) -> np.ndarray:
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32).reshape(NUM_LANDMARKS, 2)

    def face_from(self, rgb: np.ndarray, hit: Detection) -> Face:
        """Landmarks for a detection, the predictor re-run upright when the face turns out tilted."""
        height, width = rgb.shape[:2]
        limits = [width, height, width, height]
        box = hit.box if hit.roll else np.clip(hit.box, 0, limits)
        points = self.landmarks(rgb, box, hit.roll)
        roll = geometry.effective_roll(points)
        if abs(roll - hit.roll) >= geometry.MIN_ROLL_DEGREES:
            points = self.landmarks(rgb, box, roll)
        corners = geometry.box_corners(box, hit.roll)
        box = np.clip(np.concatenate([corners.min(axis=0), corners.max(axis=0)]), 0, limits)
        return Face(box=enclosing_box(box, points), landmarks_68=points, score=hit.score, stage=hit.stage)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an image, largest first, the largest flagged `primary`. No face gives an empty list.

        With `detector="auto"` the retries of the cascade run only when HOG finds nothing."""
        faces = [self.face_from(rgb, hit) for hit in self.search(rgb, self.settings.stages())]
        faces.sort(key=lambda f: -f.area)
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
