"""Follow one subject's face through a clip: detect, then track the box between detections.

The subject is the largest face in the first frame that has one. Between detections the previous box seeds the
landmark predictor and the new box comes from the predicted landmarks; a cheap appearance check (normalised
cross-correlation of a small grey thumbnail against the last detection) and a box-overlap check decide whether
tracking still holds. Detection runs every `redetect_every` frames, whenever a check fails, and on every frame
while the subject is lost. A new detection is accepted as the subject only if it overlaps the subject's box, so
the track never jumps to another person. After a loss the subject is re-acquired near where it was last seen
(within `reacquire_radius` face widths, at a similar size); after `reset_after_s` seconds lost, the largest face
counts as the subject again. Short gaps are interpolated; long gaps stay marked as lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from mllm.face.landmarks import DetectorSettings, Face, FaceDetector, box_iou, enclosing_box
from mllm.face.regions import NUM_LANDMARKS

_THUMB = 24


@dataclass(frozen=True)
class TrackerSettings:
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    redetect_every: int = 15
    min_iou: float = 0.3
    min_similarity: float = 0.5
    max_gap_s: float = 0.5
    reacquire_radius: float = 1.5
    reset_after_s: float = 3.0

    def __post_init__(self):
        if self.redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {self.redetect_every}")
        if not 0 < self.min_iou <= 1:
            raise ValueError(f"min_iou must be in (0, 1], got {self.min_iou}")
        if not -1 <= self.min_similarity <= 1:
            raise ValueError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")
        if self.max_gap_s < 0:
            raise ValueError(f"max_gap_s must be >= 0, got {self.max_gap_s}")
        if self.reacquire_radius <= 0 or self.reset_after_s <= 0:
            raise ValueError("reacquire_radius and reset_after_s must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FaceTrack:
    """Per frame: box (x0, y0, x1, y1), 68 landmarks, and whether the face was found there or interpolated.

    Frames with neither flag have no face: their boxes and landmarks are NaN.
    """

    timestamps_s: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4) float32
    landmarks_68: np.ndarray  # (N, 68, 2) float32
    found: np.ndarray  # (N,) bool: located by detection or tracking
    interpolated: np.ndarray  # (N,) bool: filled in across a short gap
    frame_size: tuple[int, int]  # (height, width)

    def __len__(self) -> int:
        return len(self.timestamps_s)

    @property
    def has_face(self) -> np.ndarray:
        return self.found | self.interpolated

    @classmethod
    def empty(cls, timestamps_s, frame_size) -> FaceTrack:
        n = len(timestamps_s)
        return cls(
            timestamps_s=np.asarray(timestamps_s, dtype=np.float64),
            boxes=np.full((n, 4), np.nan, np.float32),
            landmarks_68=np.full((n, NUM_LANDMARKS, 2), np.nan, np.float32),
            found=np.zeros(n, bool),
            interpolated=np.zeros(n, bool),
            frame_size=tuple(int(v) for v in frame_size),
        )

    @classmethod
    def from_face(cls, face: Face | None, frame_size) -> FaceTrack:
        """A one-frame track for a still image (its primary face, or none)."""
        track = cls.empty([0.0], frame_size)
        if face is not None:
            track.boxes[0], track.landmarks_68[0], track.found[0] = face.box, face.landmarks_68, True
        return track

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "timestamps_s": self.timestamps_s,
            "boxes": self.boxes,
            "landmarks_68": self.landmarks_68,
            "found": self.found,
            "interpolated": self.interpolated,
            "frame_size": np.array(self.frame_size),
        }

    @classmethod
    def from_arrays(cls, arrays) -> FaceTrack:
        return cls(
            timestamps_s=np.asarray(arrays["timestamps_s"]),
            boxes=np.asarray(arrays["boxes"]),
            landmarks_68=np.asarray(arrays["landmarks_68"]),
            found=np.asarray(arrays["found"]).astype(bool),
            interpolated=np.asarray(arrays["interpolated"]).astype(bool),
            frame_size=tuple(int(v) for v in arrays["frame_size"]),
        )


def _thumbnail(rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    # The green channel, subsampled to about twice the thumbnail first: a brightness proxy at a tenth of the cost.
    step = max(1, min(y1 - y0, x1 - x0) // (2 * _THUMB))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0:y1:step, x0:x1:step, 1]))
    thumb = np.asarray(crop.resize((_THUMB, _THUMB), Image.BILINEAR), dtype=np.float32).reshape(-1)
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return thumb / norm if norm > 1e-6 else None


def _similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    return float(a @ b) if a is not None and b is not None else -1.0


def _landmark_box(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Box from landmarks, using the detector-box-to-landmark offsets measured at the last detection."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    size = np.concatenate([hi - lo, hi - lo])
    return np.concatenate([lo, hi]) + offsets * size


def _offsets(box: np.ndarray, points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    size = np.maximum(np.concatenate([hi - lo, hi - lo]), 1.0)
    return (box - np.concatenate([lo, hi])) / size


class SubjectTracker:
    """Tracks the subject over frames given one at a time; `finish()` returns the `FaceTrack`."""

    def __init__(self, settings: TrackerSettings | None = None, detector: FaceDetector | None = None):
        self.settings = settings or TrackerSettings()
        self.detector = detector or FaceDetector(self.settings.detector)
        self._rows: list[tuple[float, np.ndarray | None, np.ndarray | None]] = []
        self._frame_size: tuple[int, int] | None = None
        self._box: np.ndarray | None = None  # current subject box, None while lost
        self._last_box: np.ndarray | None = None  # last known box, kept through losses
        self._reference: np.ndarray | None = None
        self._offsets = np.zeros(4)
        self._since_detect = 0
        self._t = 0.0
        self._last_seen_s = 0.0

    def _accept_detection(self, rgb: np.ndarray) -> bool:
        """Detect and take the face that continues the subject; False when there is none.

        While the subject is held, only the region around its box is searched (cheap); a miss there, a loss,
        or the first frame search the whole frame."""
        self._since_detect = 0
        boxes = []
        if self._box is not None:
            boxes = [b for b, _ in self.detector.detect_boxes(rgb, near=self._box)]
        if not boxes:
            boxes = [b for b, _ in self.detector.detect_boxes(rgb)]
        if not boxes:
            return False
        if self._last_box is not None and self._t - self._last_seen_s > self.settings.reset_after_s:
            self._last_box = None  # lost for long: start over as at the first frame
        if self._last_box is None:
            box = boxes[0]  # first sighting: the largest face is the subject
        else:
            overlaps = [box_iou(b, self._last_box) for b in boxes]
            best = int(np.argmax(overlaps))
            # The face overlapping the subject's box; failing that (a loss, or frames sampled far apart), the
            # nearest face of similar size close to where the subject was; none: only other people are here.
            box = boxes[best] if overlaps[best] >= self.settings.min_iou else self._reacquire(boxes)
            if box is None:
                return False
        points = self.detector.landmarks(rgb, box)
        self._offsets = _offsets(box, points)
        self._reference = _thumbnail(rgb, box)
        self._set(box, points)
        return True

    def _reacquire(self, boxes: list[np.ndarray]) -> np.ndarray | None:
        """The detection nearest the last known box, if near enough and of a similar size."""
        last = self._last_box
        width = last[2] - last[0]
        centre = (last[:2] + last[2:]) / 2
        best, best_distance = None, self.settings.reacquire_radius * width
        for box in boxes:
            ratio = (box[2] - box[0]) / width
            distance = float(np.hypot(*((box[:2] + box[2:]) / 2 - centre)))
            if 0.5 <= ratio <= 2.0 and distance <= best_distance:
                best, best_distance = box, distance
        return best

    def _set(self, box, points):
        self._box = self._last_box = box
        self._last_seen_s = self._t
        self._rows.append((self._t, enclosing_box(box, points), points))

    def update(self, rgb: np.ndarray, timestamp_s: float) -> None:
        self._t = float(timestamp_s)
        if self._frame_size is None:
            self._frame_size = rgb.shape[:2]
        elif rgb.shape[:2] != self._frame_size:
            raise ValueError(f"frame size changed from {self._frame_size} to {rgb.shape[:2]} within one clip")
        self._since_detect += 1
        if self._box is not None and self._since_detect < self.settings.redetect_every:
            points = self.detector.landmarks(rgb, self._box)
            box = _landmark_box(points, self._offsets)
            if (
                box_iou(box, self._box) >= self.settings.min_iou
                and _similarity(_thumbnail(rgb, box), self._reference) >= self.settings.min_similarity
            ):
                self._set(box, points)
                return
        if self._accept_detection(rgb):
            return
        self._box = None
        self._rows.append((self._t, None, None))

    def finish(self) -> FaceTrack:
        track = FaceTrack.empty([r[0] for r in self._rows], self._frame_size or (0, 0))
        for i, (_, box, points) in enumerate(self._rows):
            if box is not None:
                track.boxes[i], track.landmarks_68[i], track.found[i] = box, points, True
        interpolate_gaps(track, self.settings.max_gap_s)
        return track


def interpolate_gaps(track: FaceTrack, max_gap_s: float) -> None:
    """Fill lost frames lying between two found frames at most `max_gap_s` apart, linearly in time. The bound is
    in seconds, not frames, so a one-second absence stays marked however sparsely the clip was sampled."""
    found = np.flatnonzero(track.found)
    for left, right in zip(found[:-1], found[1:], strict=True):
        t0, t1 = track.timestamps_s[left], track.timestamps_s[right]
        if right - left == 1 or t1 - t0 > max_gap_s + 1e-9:
            continue
        for i in range(left + 1, right):
            w = (track.timestamps_s[i] - t0) / (t1 - t0) if t1 > t0 else (i - left) / (right - left)
            track.boxes[i] = (1 - w) * track.boxes[left] + w * track.boxes[right]
            track.landmarks_68[i] = (1 - w) * track.landmarks_68[left] + w * track.landmarks_68[right]
            track.interpolated[i] = True


def track_subject(
    frames: Iterable[np.ndarray],
    timestamps_s: Iterable[float],
    settings: TrackerSettings | None = None,
    detector: FaceDetector | None = None,
) -> FaceTrack:
    tracker = SubjectTracker(settings, detector)
    for rgb, t in zip(frames, timestamps_s, strict=True):
        tracker.update(rgb, t)
    return tracker.finish()
