"""Follow one subject's face through a clip: detect, then track the box between detections.

The subject is the largest face in the first frame that has one. Between detections the previous box seeds the
landmark predictor and the new box comes from the predicted landmarks; a cheap appearance check (normalised
cross-correlation of a small grey thumbnail against the last detection) and a box-overlap check decide whether
tracking still holds. Detection runs every `redetect_every` frames (around the subject only) and whenever a check
fails. A new detection is accepted as the subject only if it overlaps the subject's box, so the track never jumps
to another person. After a loss the subject is re-acquired near where it was last seen (within `reacquire_radius`
face widths, at a similar size); after `reset_after_s` seconds lost, the largest face counts as the subject again.

While the subject is lost the whole frame is searched at most every `lost_search_every` frames; the frames skipped
in between are held (a few at most) and, once a face is found again, it is followed backwards through them (tracked,
or re-detected around its box) and judged as the subject where it first shows, so the skipping saves detector runs
without losing frames. A subject lost for `fallback_after_s` also gets the cascade's
costlier retries (the frame turned by +-25 degrees, every `fallback_every_s`; after `cnn_after_s`, dlib's CNN, at
most once every `cnn_every_s`). A tilted head is tracked upright: past 10 degrees of roll the predictor sees a patch
turned level. Short gaps are interpolated; long gaps stay marked as lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from mllm.face import geometry
from mllm.face.landmarks import (
    ROTATIONS_DEGREES,
    Detection,
    DetectorSettings,
    Face,
    FaceDetector,
    box_iou,
    enclosing_box,
)
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
    # While lost: search the whole frame at most every this many frames (frames further apart than
    # `lost_search_s` are always searched, so sparsely sampled clips lose nothing).
    lost_search_every: int = 8
    lost_search_s: float = 0.3
    # With detector="auto": the rotated retries once the subject has been lost `fallback_after_s` (then at most
    # every `fallback_every_s`, turning the frame one way, then the other), dlib's CNN after `cnn_after_s` and at
    # most once every `cnn_every_s` (one CNN pass costs about as much as tracking 500 frames).
    fallback_after_s: float = 1.0
    fallback_every_s: float = 0.5
    cnn_after_s: float = 3.0
    cnn_every_s: float = 10.0

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
        if not 1 <= self.lost_search_every <= 30:
            raise ValueError(f"lost_search_every must be in 1..30, got {self.lost_search_every}")
        waits = (self.lost_search_s, self.fallback_after_s, self.fallback_every_s, self.cnn_after_s, self.cnn_every_s)
        if min(waits) < 0:
            raise ValueError(
                "lost_search_s, fallback_after_s, fallback_every_s, cnn_after_s, cnn_every_s must be >= 0"
            )

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
    # The green channel (a brightness proxy) sampled on a 2x grid and averaged 2x2: a few microseconds, and the
    # averaging takes the edge off sensor noise.
    ys = np.linspace(y0, y1 - 1, 2 * _THUMB).round().astype(np.intp)
    xs = np.linspace(x0, x1 - 1, 2 * _THUMB).round().astype(np.intp)
    grid = rgb[ys[:, None], xs[None, :], 1].astype(np.float32)
    thumb = grid.reshape(_THUMB, 2, _THUMB, 2).mean(axis=(1, 3)).reshape(-1)
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return thumb / norm if norm > 1e-6 else None


def _similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    return float(a @ b) if a is not None and b is not None else -1.0


def _landmark_box(points: np.ndarray, offsets: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Box from landmarks, using the detector-box-to-landmark offsets measured at the last detection. With a roll
    the offsets apply to the face seen upright; the box returned is that upright box, centred on the face."""
    extent, centre = geometry.upright_box(points, roll)
    size = np.concatenate([extent[2:] - extent[:2]] * 2)
    box = extent + offsets * size
    if not roll:
        return box
    middle = geometry.apply(geometry.rotation(roll, centre), [(box[:2] + box[2:]) / 2])[0]
    half = (box[2:] - box[:2]) / 2
    return np.concatenate([middle - half, middle + half])


def _offsets(box: np.ndarray, points: np.ndarray, roll: float = 0.0) -> np.ndarray:
    extent, centre = geometry.upright_box(points, roll)
    if roll:
        middle = geometry.apply(geometry.rotation(-roll, centre), [(box[:2] + box[2:]) / 2])[0]
        half = (box[2:] - box[:2]) / 2
        box = np.concatenate([middle - half, middle + half])
    size = np.maximum(np.concatenate([extent[2:] - extent[:2]] * 2), 1.0)
    return (box - extent) / size


class SubjectTracker:
    """Tracks the subject over frames given one at a time; `finish()` returns the `FaceTrack`."""

    def __init__(self, settings: TrackerSettings | None = None, detector: FaceDetector | None = None):
        self.settings = settings or TrackerSettings()
        self.detector = detector or FaceDetector(self.settings.detector)
        self._rows: list[tuple[float, np.ndarray | None, np.ndarray | None]] = []
        self._frame_size: tuple[int, int] | None = None
        self._box: np.ndarray | None = None  # current subject box (seen upright), None while lost
        self._roll = 0.0  # the subject's tilt, degrees (0 below 10)
        self._last_box: np.ndarray | None = None  # last known box, kept through losses
        self._reference: np.ndarray | None = None
        self._offsets = np.zeros(4)
        self._since_detect = 0
        self._t = 0.0
        self._last_seen_s: float | None = None  # None until the first frame
        self._skipped: list[tuple[int, np.ndarray]] = []  # (row, frame) not searched while lost, newest last
        self._last_search_s = -np.inf
        self._last_fallback_s = -np.inf
        self._last_cnn_s = -np.inf
        self._retries = 0  # rotated retries so far: they alternate between the two angles

    def _stages(self) -> tuple[str, ...]:
        """The search for a lost subject: the first stage, plus the costlier retries once lost for a while."""
        detector = self.detector.settings
        if detector.detector != "auto":
            return (detector.first_stage,)
        lost_for = self._t - self._last_seen_s
        stages = ("hog",)
        every = self.settings.fallback_every_s - 1e-9
        if lost_for >= self.settings.fallback_after_s and self._t - self._last_fallback_s >= every:
            self._last_fallback_s = self._t
            stages += ("rotated",)
            if lost_for >= self.settings.cnn_after_s and self._t - self._last_cnn_s >= self.settings.cnn_every_s:
                self._last_cnn_s = self._t
                stages += ("cnn",)
        return stages

    def _accept_detection(self, rgb: np.ndarray, hits: list[Detection] | None = None) -> bool:
        """Take the face that continues the subject from `hits` (default: search the whole frame, with the
        cascade's retries when the subject has been lost for a while); False when there is none. Frames skipped
        while the subject was lost are filled by tracking the accepted face backwards through them."""
        self._since_detect = 0
        self._last_search_s = self._t
        if hits is None:
            stages = self._stages()
            angle = ROTATIONS_DEGREES[self._retries % len(ROTATIONS_DEGREES)]
            self._retries += "rotated" in stages
            hits = self.detector.search(rgb, stages, rotations=(angle,))
        if not hits:
            return False
        if self._last_box is not None and self._t - self._last_seen_s > self.settings.reset_after_s:
            self._last_box = None  # lost for long: start over as at the first frame
        judged_earlier = False
        if self._last_box is None:
            candidates = [hits[0]]  # first sighting: the largest face is the subject
        else:
            overlaps = [box_iou(h.box, self._last_box) for h in hits]
            best = int(np.argmax(overlaps))
            # The face overlapping the subject's box; failing that (a loss, or frames sampled far apart), the
            # nearest face of similar size close to where the subject was; none: only other people are here...
            near = hits[best] if overlaps[best] >= self.settings.min_iou else self._reacquire(hits)
            candidates = [near] if near is not None else []
            if near is None and self._skipped:
                # ...unless frames were skipped since the last search: a subject walking back in may already be
                # far from where it left, so each face is judged where tracking it backwards first sees it.
                candidates, judged_earlier = hits, True
        return any(self._take(rgb, hit, judged_earlier) for hit in candidates)

    def _take(self, rgb: np.ndarray, hit: Detection, judged_earlier: bool) -> bool:
        face = self.detector.face_from(rgb, hit)
        box = hit.box.copy()
        if not hit.roll:
            height, width = rgb.shape[:2]
            np.clip(box, 0, [width, height, width, height], out=box)
        previous = (self._roll, self._offsets, self._reference)
        self._roll = geometry.effective_roll(face.landmarks_68)
        self._offsets = _offsets(box, face.landmarks_68, self._roll)
        self._reference = _thumbnail(rgb, box)
        trail = self._trace_back(box)
        if judged_earlier:
            earliest = trail[-1][1] if trail else box
            continues = box_iou(earliest, self._last_box) >= self.settings.min_iou
            if not (continues or self._reacquire([Detection(earliest, hit.score, hit.stage)]) is not None):
                self._roll, self._offsets, self._reference = previous
                return False
        for row, traced, points in trail:
            self._rows[row] = (self._rows[row][0], self._face_box(traced, points), points)
        self._skipped.clear()
        self._set(box, face.landmarks_68)
        return True

    def _trace_back(self, box: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(row, box, landmarks) of the subject followed backwards from `box` through the frames skipped while it
        was lost, newest first, as far as it can be followed (tracked, or re-detected around its box when it moves
        too fast to track: a subject walking back into shot)."""
        trail = []
        for row, rgb in reversed(self._skipped):
            followed = self._follow(rgb, box)
            if followed is None:
                hit = self._reacquire(self.detector.search(rgb, near=box), box)
                if hit is None:
                    break
                followed = hit.box, self.detector.face_from(rgb, hit).landmarks_68
            box, points = followed
            trail.append((row, box, points))
        return trail

    def _reacquire(self, hits: list[Detection], last: np.ndarray | None = None) -> Detection | None:
        """The detection nearest `last` (default: the last known box), if near enough and of a similar size."""
        last = self._last_box if last is None else last
        width = last[2] - last[0]
        centre = (last[:2] + last[2:]) / 2
        best, best_distance = None, self.settings.reacquire_radius * width
        for hit in hits:
            box = hit.box
            ratio = (box[2] - box[0]) / width
            distance = float(np.hypot(*((box[:2] + box[2:]) / 2 - centre)))
            if 0.5 <= ratio <= 2.0 and distance <= best_distance:
                best, best_distance = hit, distance
        return best

    def _set(self, box, points):
        self._box = self._last_box = box
        self._last_seen_s = self._t
        self._rows.append((self._t, self._face_box(box, points), points))

    def _face_box(self, box: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The box reported for a frame: the detector-style box (turned by the roll) grown to hold every point."""
        corners = geometry.box_corners(box, self._roll)
        return enclosing_box(np.concatenate([corners.min(axis=0), corners.max(axis=0)]), points)

    def _follow(self, rgb: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The subject's (box, landmarks) in `rgb` seeded by `box`, or None when a check fails."""
        points = self.detector.landmarks(rgb, box, self._roll)
        new_box = _landmark_box(points, self._offsets, self._roll)
        if (
            box_iou(new_box, box) >= self.settings.min_iou
            and _similarity(_thumbnail(rgb, new_box), self._reference) >= self.settings.min_similarity
        ):
            return new_box, points
        return None

    def _search_due(self) -> bool:
        skipped = len(self._skipped) + 1 >= self.settings.lost_search_every
        return skipped or self._t - self._last_search_s >= self.settings.lost_search_s - 1e-9

    def update(self, rgb: np.ndarray, timestamp_s: float) -> None:
        self._t = float(timestamp_s)
        if self._frame_size is None:
            self._frame_size = rgb.shape[:2]
            self._last_seen_s = self._t
        elif rgb.shape[:2] != self._frame_size:
            raise ValueError(f"frame size changed from {self._frame_size} to {rgb.shape[:2]} within one clip")
        self._since_detect += 1
        if self._box is not None:
            due = self._since_detect >= self.settings.redetect_every
            followed = None if due else self._follow(rgb, self._box)
            if followed is not None:
                self._hold(*followed)
                return
            # Time to re-detect, or tracking failed: look around the subject first (cheap).
            if self._accept_detection(rgb, self.detector.search(rgb, near=self._box)):
                return
            if due:
                followed = self._follow(rgb, self._box)
            if followed is not None:
                # The detector misses a face that tracking still holds (a pose only a retry stage found): keep it.
                self._since_detect = 0
                self._hold(*followed)
                return
        elif not self._search_due():
            self._rows.append((self._t, None, None))
            self._skipped.append((len(self._rows) - 1, rgb))
            return
        if self._accept_detection(rgb):
            return
        self._box = None
        self._skipped.clear()
        self._rows.append((self._t, None, None))

    def _hold(self, box: np.ndarray, points: np.ndarray) -> None:
        self._set(box, points)
        self._roll = geometry.effective_roll(points)

    def rows_since(self, start_s: float) -> list[tuple[float, np.ndarray | None, np.ndarray | None]]:
        """The (timestamp, box, landmarks) of each frame from `start_s` on, as tracked so far (a frame held while the
        subject was lost may still be filled in later, when the face is found again and followed back)."""
        return [row for row in self._rows if row[0] >= start_s - 1e-9]

    def forget_before(self, start_s: float) -> None:
        """Drop the rows of frames before `start_s` (a live session keeps only its window): the tracker's state and
        the frames it may still follow back through are kept, so tracking goes on as if nothing was dropped."""
        old = sum(1 for row in self._rows if row[0] < start_s - 1e-9)
        if self._skipped:
            old = min(old, self._skipped[0][0])
        if old:
            del self._rows[:old]
            self._skipped = [(row - old, rgb) for row, rgb in self._skipped]

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
