"""The detection cascade on hard poses of real faces (scikit-image's photographs), and its use while tracking."""

import numpy as np
import pytest
from PIL import Image

from mllm.face import (
    DetectorSettings,
    FaceCache,
    FaceDetector,
    TrackerSettings,
    image_faces,
    track_subject,
    video_face_track,
)
from mllm.face.geometry import apply, roll_degrees, rotation
from mllm.face.landmarks import box_iou, eye_centres
from mllm.samples import synthetic


@pytest.fixture(scope="module")
def photos():
    return {p.name: p for p in synthetic.face_photos(lfw=23)}


def _detector(detector="auto", **kwargs):
    return FaceDetector(DetectorSettings(min_face_fraction=0.0, detector=detector, **kwargs))


def _inside(face, truth, offset=(0, 0)) -> bool:
    cx, cy = (face.box[:2] + face.box[2:]) / 2 + np.asarray(offset)
    return bool(truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3])


def _error(points, truth) -> float:
    """Mean landmark distance in inter-ocular distances."""
    right, left = eye_centres(truth)
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(left - right))


def test_detector_setting_is_checked_and_names_the_stages():
    with pytest.raises(ValueError, match="hog, cnn, auto"):
        DetectorSettings(detector="haar")
    assert DetectorSettings(detector="hog").stages() == ("hog",)
    assert DetectorSettings(detector="cnn").stages() == ("cnn",)
    assert DetectorSettings().stages() == ("hog", "rotated", "upsampled", "cnn")
    with pytest.raises(ValueError, match="unknown detection stage"):
        FaceDetector().search(np.zeros((40, 40, 3), np.uint8), ("magic",))


def test_tilted_face_with_covered_brow_is_found_by_the_rotated_stage(photos):
    """A real face tilted 20 degrees with a band over the brow (a hand on the forehead): HOG finds nothing, the
    frame turned by 25 degrees does, and the landmarks come back in the frame's own coordinates."""
    photo = photos["lfw000"]
    rgb = synthetic.face_variants(photo)["tilted 20 + brow"]
    assert _detector("hog").detect(rgb) == []
    detector = _detector()
    (face,) = detector.detect(rgb)
    assert face.stage == "rotated" and face.primary and _inside(face, photo.box)
    assert detector.stage_runs["rotated"] == 1 and detector.stage_runs["cnn"] == 0  # stopped at the first hit
    # PIL turns counter-clockwise on screen by 20 degrees: the eye line falls to the left, a roll near -20.
    assert -32 < roll_degrees(face.landmarks_68) < -8
    x0, y0, x1, y1 = face.box
    points = face.landmarks_68
    assert np.all((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1))


@pytest.mark.parametrize("degrees", [30, -30])
def test_rotated_stage_maps_landmarks_back_accurately(photos, degrees):
    photo = photos["astronaut"]
    upright = _detector("hog").detect(photo.rgb)[0].landmarks_68
    centre = (photo.box[:2] + photo.box[2:]) / 2
    rgb = synthetic.tilted(photo.rgb, degrees, centre)
    truth = apply(rotation(-degrees, centre), upright)  # PIL's positive angle is counter-clockwise on screen
    detector = _detector()
    (hit,) = detector.search(rgb, ("rotated",))
    assert hit.roll == pytest.approx(np.sign(-degrees) * 25)
    face = detector.face_from(rgb, hit)
    assert _error(face.landmarks_68, truth) < 0.06
    assert roll_degrees(face.landmarks_68) == pytest.approx(-degrees + roll_degrees(upright), abs=5)


@pytest.mark.parametrize(
    "name, variant, stage",
    [
        ("astronaut", "three-quarter", "hog"),
        ("lfw021", "three-quarter", "rotated"),
        ("lfw022", "three-quarter", "upsampled"),
        ("lfw002", "tilted -25", "rotated"),
    ],
)
def test_each_pose_is_found_by_the_cheapest_stage_that_can(photos, name, variant, stage):
    photo = photos[name]
    detector = _detector()
    (face,) = detector.detect(synthetic.face_variants(photo)[variant])
    assert face.stage == stage and _inside(face, photo.box)
    assert sum(detector.stage_runs.values()) == 1 + ("hog", "rotated", "upsampled").index(stage)


def test_covered_brow_found_by_upsampling_at_full_resolution_only(photos):
    photo = photos["lfw001"]
    rgb = synthetic.face_variants(photo)["brow covered"]
    detector = _detector()
    (face,) = detector.detect(rgb)
    assert face.stage == "upsampled" and _inside(face, photo.box)
    # A search asked for large faces only runs downscaled: upsampling there would look for faces smaller than asked.
    coarse = FaceDetector(DetectorSettings(min_face_fraction=0.9, detector="auto"))
    coarse.search(rgb, ("hog", "upsampled"))
    assert coarse.stage_runs["upsampled"] == 0


def test_cnn_is_the_last_resort(photos):
    """The astronaut tilted with her brow covered: HOG, the rotated and the upsampled searches all miss; the CNN
    finds her, its box mapped to where HOG would draw it so the landmarks land on the face."""
    photo = photos["astronaut"]
    x, y = 94, 0  # a 256x256 cut around the face keeps the CNN to about a second
    rgb = np.ascontiguousarray(synthetic.face_variants(photo)["tilted 20 + brow"][y : y + 256, x : x + 256])
    detector = _detector()
    (face,) = detector.detect(rgb)
    assert face.stage == "cnn" and _inside(face, photo.box, offset=(x, y))
    assert [detector.stage_runs[s] for s in ("hog", "rotated", "upsampled", "cnn")] == [1, 1, 1, 1]
    right, left = eye_centres(face.landmarks_68)
    assert right[0] < left[0] and np.linalg.norm(left - right) > 25  # two eyes, the right one on the image's left
    # On the upright face the CNN's mapped box and landmarks agree with HOG's.
    upright = np.ascontiguousarray(photo.rgb[y : y + 256, x : x + 256])
    (hog,) = _detector("hog").detect(upright)
    (cnn,) = _detector("cnn").detect(upright)
    assert cnn.stage == "cnn" and _error(cnn.landmarks_68, hog.landmarks_68) < 0.1


def test_detector_is_part_of_the_cache_key(astronaut_png, tmp_path):
    cache = FaceCache(tmp_path / "cache")
    image_faces(astronaut_png, settings=DetectorSettings(min_face_fraction=0.0, detector="hog"), cache=cache)
    image_faces(astronaut_png, settings=DetectorSettings(min_face_fraction=0.0, detector="auto"), cache=cache)
    assert cache.misses == 2 and cache.hits == 0
    faces = image_faces(astronaut_png, settings=DetectorSettings(min_face_fraction=0.0, detector="auto"), cache=cache)
    assert cache.hits == 1 and faces[0].stage == "hog"


def _moving(rgb: np.ndarray, n: int) -> np.ndarray:
    """`n` frames of `rgb` drifting one pixel a frame to the right (edge-padded)."""
    pad = n
    wide = np.pad(rgb, ((0, 0), (pad, pad), (0, 0)), mode="edge")
    return np.stack([wide[:, pad - i : pad - i + rgb.shape[1]] for i in range(n)])


def test_tracker_retries_a_lost_subject_with_the_cascade_and_tracks_the_tilted_head(photos):
    """Every frame shows the tilted, brow-covered face that HOG misses. After `fallback_after_s` lost, the rotated
    search finds it (one angle per retry, alternating), and roll-aware tracking holds it from there on."""
    frames = _moving(synthetic.face_variants(photos["lfw001"])["tilted 20 + brow"], 75)
    times = np.arange(75) / 25.0
    settings = TrackerSettings(detector=DetectorSettings(min_face_fraction=0.25, detector="hog"))
    assert not track_subject(frames, times, settings).found.any()
    detector = FaceDetector(DetectorSettings(min_face_fraction=0.25))
    track = track_subject(frames, times, TrackerSettings(detector=detector.settings), detector)
    first = int(np.argmax(track.found))
    # Found once lost for a second (retried every half second or so); the frames skipped just before are backfilled.
    assert 0.6 <= times[first] <= 2.6
    assert track.found[first:].all()
    assert detector.stage_runs["rotated"] >= 1 and detector.stage_runs["cnn"] == 0
    rolls = [roll_degrees(p) for p in track.landmarks_68[track.found]]
    assert -32 < np.median(rolls) < -8


def test_lost_subject_search_skips_frames_and_backfills_them():
    """While the face is away the whole frame is searched only every few frames; when it comes back, the frames
    skipped in between are tracked backwards, so the result matches searching every frame."""
    frames = synthetic.face_frames(60, absent=range(20, 33))
    times = np.arange(60) / 25.0
    every = FaceDetector()
    dense = track_subject(frames, times, TrackerSettings(lost_search_every=1, max_gap_s=0), every)
    sparse_detector = FaceDetector()
    sparse = track_subject(frames, times, TrackerSettings(lost_search_every=5, max_gap_s=0), sparse_detector)
    assert dense.found[:20].all() and dense.found[33:].all() and not dense.found[20:33].any()
    np.testing.assert_array_equal(sparse.found, dense.found)
    both = sparse.found & dense.found
    assert np.abs(sparse.landmarks_68[both] - dense.landmarks_68[both]).max() < 3.0
    assert sparse_detector.stage_runs["hog"] < every.stage_runs["hog"] - 6


def test_costly_retries_are_rate_limited_on_a_video_without_a_face():
    """4.4 s without a face: the rotated retry every half second after the first second, the CNN once, at 3 s."""
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 110, (110, 120, 160, 3), dtype=np.uint8)
    times = np.arange(110) / 25.0
    detector = FaceDetector(DetectorSettings(min_face_fraction=0.25))
    track = track_subject(frames, times, TrackerSettings(detector=detector.settings), detector)
    assert not track.found.any()
    assert detector.stage_runs["cnn"] == 1
    assert 5 <= detector.stage_runs["rotated"] <= 7  # on the search frames from 1 s on, half a second apart
    assert detector.stage_runs["hog"] == pytest.approx(110 / TrackerSettings().lost_search_every, abs=2)
    hog_only = FaceDetector(DetectorSettings(min_face_fraction=0.25, detector="hog"))
    track_subject(frames, times, TrackerSettings(detector=hog_only.settings), hog_only)
    assert set(hog_only.stage_runs) == {"hog"}


def test_subject_walking_back_into_shot_is_found_as_soon_as_searching_every_frame_finds_it():
    """Camera-like footage: the subject walks out and back in fast (a face width every two frames). Searching
    only every few frames while lost still finds them from the same frame: the face found on return is followed
    backwards (tracked, or re-detected around its box) to where it first showed, and judged there."""
    frames = np.stack(list(synthetic.camera_frames(64, absent=range(20, 34))))
    times = np.arange(64) / 25.0
    dense = track_subject(frames, times, TrackerSettings(lost_search_every=1, max_gap_s=0))
    sparse = track_subject(frames, times, TrackerSettings(max_gap_s=0))
    assert dense.found[:10].all() and dense.found[50:].all() and not dense.found[20:34].any()
    np.testing.assert_array_equal(sparse.found, dense.found)


def test_frames_that_are_not_contiguous_are_searched_like_any_other(media_dir):
    """dlib's detectors misread arrays whose rows are not packed (a region cut from a frame; a decoded frame of a
    426 px wide video, whose rows FFmpeg pads) and find nothing; the detector hands them over packed."""
    canvas = np.zeros((700, 900, 3), np.uint8)
    canvas[100:612, 200:712] = synthetic.astronaut()
    view = canvas[100:612, 200:712]
    assert not view.flags["C_CONTIGUOUS"]
    (face,) = _detector("hog").detect(view)
    assert 150 < (face.box[0] + face.box[2]) / 2 < 260
    # A region search around a face under 96 px runs at full scale on a cut of the frame: it finds the face there.
    (hit,) = FaceDetector().search(canvas, near=np.array([379.0, 183.0, 466.0, 270.0]))
    assert box_iou(hit.box, np.array([379.0, 183.0, 466.0, 270.0])) > 0.7
    frames = synthetic.face_frames(12, size=(240, 426), face_height_fraction=0.8)
    video = synthetic.write_video(media_dir / "w426.mp4", frames, fps=25)
    track = video_face_track(video, cache=False)  # streamed: frames straight from the decoder, rows padded
    assert track.found.all()


class _Recording:
    """dlib's shape predictor, recording the size of every image it is handed."""

    def __init__(self, predictor):
        self.predictor, self.shapes = predictor, []

    def __call__(self, image, rect):
        self.shapes.append(image.shape[:2])
        return self.predictor(image, rect)


@pytest.mark.parametrize("face_px", [80, 160, 240, 320])
def test_a_tilted_face_costs_the_same_at_every_size_and_its_points_agree_with_full_resolution(photos, face_px):
    """The predictor sees a tilted face on an upright patch holding the face at 120 px at most, whatever its size in
    the frame (a phone held close): the patch never grows, and the points stay within 3% of the inter-ocular
    distance on average (10% for any one point) of the points found on a full-resolution patch."""
    photo = photos["astronaut"]
    scale = face_px / (photo.box[2] - photo.box[0])
    size = round(photo.rgb.shape[0] * scale)
    rgb = np.asarray(Image.fromarray(photo.rgb).resize((size, size), Image.BICUBIC))
    box = photo.box * scale
    centre = (box[:2] + box[2:]) / 2
    upright = _detector("hog").landmarks(rgb, box)
    tilted = synthetic.tilted(rgb, 20, centre)
    truth = apply(rotation(-20, centre), upright)
    roll = roll_degrees(truth)
    assert roll < -10  # the predictor takes the upright-patch path

    detector = _detector()
    detector._predictor = recording = _Recording(detector._predictor)
    points = detector.landmarks(tilted, box, roll)
    full = _detector()
    full.rolled_face_px, full.rolled_margin = 10_000.0, 0.5  # the whole face, at its own size
    reference = full.landmarks(tilted, box, roll)

    (shape,) = recording.shapes
    assert max(shape) <= int(np.ceil(2 * min(face_px, 120))) + 1
    assert _error(points, reference) < 0.03
    right, left = eye_centres(reference)
    assert np.linalg.norm(points - reference, axis=1).max() < 0.10 * np.linalg.norm(left - right)
    assert _error(points, truth) < 0.06 and _error(reference, truth) < 0.06
