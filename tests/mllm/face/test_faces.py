import numpy as np
import pytest
from PIL import Image

from mllm.face import (
    REGION_NAMES,
    REGIONS,
    DetectorSettings,
    FaceCache,
    FaceDetector,
    TrackerSettings,
    align_face,
    image_faces,
    track_subject,
    video_face_track,
)
from mllm.face.landmarks import eye_centres, mouth_centre
from mllm.face.regions import region_of_point
from mllm.samples import synthetic


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(DetectorSettings(min_face_fraction=0.0))


def test_regions_are_the_ibug_partition():
    assert REGION_NAMES == (
        "jaw",
        "right_brow",
        "left_brow",
        "nose_bridge",
        "nostrils",
        "right_eye",
        "left_eye",
        "outer_lips",
        "inner_lips",
    )
    covered = sorted(i for r in REGIONS.values() for i in r)
    assert covered == list(range(68))
    assert region_of_point(0) == "jaw" and region_of_point(48) == "outer_lips" and region_of_point(67) == "inner_lips"
    with pytest.raises(ValueError, match="0..67"):
        region_of_point(68)


def test_astronaut_has_one_face_with_68_points_inside_its_box(detector):
    faces = detector.detect(synthetic.astronaut())
    assert len(faces) == 1 and faces[0].primary
    face = faces[0]
    points, (x0, y0, x1, y1) = face.landmarks_68, face.box
    assert points.shape == (68, 2)
    assert np.all((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1))
    # The known face in the photograph (about 87 px wide, left of centre, upper part of the image).
    assert 150 < (x0 + x1) / 2 < 260 and 80 < (y0 + y1) / 2 < 200 and 70 < x1 - x0 < 140
    right_eye, left_eye = eye_centres(points)
    mouth = mouth_centre(points)
    assert right_eye[1] < mouth[1] and left_eye[1] < mouth[1]
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left


@pytest.mark.parametrize("image", ["cat", "flat"])
def test_no_face_gives_none_without_error(detector, image):
    rgb = synthetic.no_face_image() if image == "cat" else np.full((300, 400, 3), 128, np.uint8)
    assert detector.detect(rgb) == []


def test_multi_face_image_orders_faces_and_flags_the_primary(detector):
    big = synthetic.astronaut()
    small = np.asarray(Image.fromarray(big).resize((400, 400)))
    canvas = np.full((512, 1000, 3), 90, np.uint8)
    canvas[:, 480:992] = big
    canvas[56:456, 20:420] = small
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert [f.primary for f in faces] == [True, False]
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] > 480 and faces[1].box[2] < 420  # the big one is the right-hand copy


def test_aligned_crop_has_level_eyes_and_unit_landmarks(detector):
    rgb = synthetic.astronaut()
    tilted = np.asarray(Image.fromarray(rgb).rotate(20, resample=Image.BILINEAR, center=(222, 127)))
    face = detector.detect(tilted)[0]
    aligned = align_face(tilted, face.landmarks_68, size=96)
    assert aligned.crop.shape == (96, 96, 3)
    assert aligned.landmarks_01.min() >= 0 and aligned.landmarks_01.max() <= 1
    right_eye, left_eye = eye_centres(aligned.landmarks_01)
    assert abs(right_eye[1] - left_eye[1]) < 1e-3  # level
    assert right_eye[1] == pytest.approx(0.38, abs=1e-3)
    assert left_eye[0] - right_eye[0] == pytest.approx(0.32, abs=1e-3)
    # The crop is a face: the detector finds one in it.
    big = np.asarray(Image.fromarray(aligned.crop).resize((256, 256)))
    assert len(detector.detect(big)) == 1
    with pytest.raises(ValueError, match="crop size"):
        align_face(rgb, face.landmarks_68, size=4)


def test_tracking_marks_a_long_gap_and_recovers_the_subject(video_face_gap):
    detector = FaceDetector()
    track = video_face_track(video_face_gap, cache=False, detector=detector)
    assert len(track) == 75
    assert track.found[:25].all() and track.found[50:].all()
    assert not track.found[25:50].any() and not track.interpolated[25:50].any()
    assert np.isnan(track.landmarks_68[30]).all()
    # Tracked between detections: far fewer detector runs than frames with a face.
    assert detector.detect_calls < 25 + 2 * 50 / TrackerSettings().redetect_every + 4


def test_short_gap_is_interpolated():
    frames = synthetic.face_frames(20, absent=range(8, 10))
    track = track_subject(frames, np.arange(20) / 25.0, TrackerSettings(max_gap_s=0.2))
    assert track.found[:8].all() and track.found[10:].all()
    assert not track.found[8:10].any() and track.interpolated[8:10].all()
    # Interpolated points lie between their neighbours.
    lo = np.minimum(track.landmarks_68[7], track.landmarks_68[10]) - 1e-3
    hi = np.maximum(track.landmarks_68[7], track.landmarks_68[10]) + 1e-3
    assert np.all((track.landmarks_68[8] >= lo) & (track.landmarks_68[8] <= hi))
    assert track.has_face.all()


def test_subject_does_not_switch_to_another_person():
    """The subject (largest face, left) leaves for a while; a smaller second person (right) stays in view.
    While the subject is away the track is lost rather than jumping to the other person."""
    head = synthetic.astronaut()[20:280, 100:350]
    subject = np.asarray(Image.fromarray(head).resize((240, 250)))
    other = np.asarray(Image.fromarray(head).resize((163, 170)))
    frames = np.full((30, 360, 640, 3), 90, np.uint8)
    for i in range(30):
        frames[i, 100:270, 450:613] = other
        if not 10 <= i < 20:
            x = 40 + 2 * i  # the subject drifts slowly to the right
            frames[i, 50:300, x : x + 240] = subject
    track = track_subject(frames, np.arange(30) / 25.0, TrackerSettings(max_gap_s=0.1))
    assert track.found[:10].all() and track.found[20:].all()
    assert not track.found[10:20].any()
    centres_x = (track.boxes[track.found, 0] + track.boxes[track.found, 2]) / 2
    assert np.all(centres_x < 400)  # always the subject on the left, never the person on the right


def test_cache_hit_does_no_decoding_and_no_detection(video_with_audio, tmp_path, monkeypatch):
    cache = FaceCache(tmp_path / "cache")
    first = video_face_track(video_with_audio, num_frames=10, cache=cache)
    assert cache.misses == 1 and first.found.all()

    import mllm.face.pipeline as pipeline

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded media on a cache hit")

    monkeypatch.setattr(pipeline, "load_video", no_decoding)
    monkeypatch.setattr(pipeline, "iter_frames", no_decoding)
    detector = FaceDetector()
    second = video_face_track(video_with_audio, num_frames=10, cache=cache, detector=detector)
    assert detector.detect_calls == 0 and cache.hits == 1
    np.testing.assert_array_equal(second.landmarks_68, first.landmarks_68)
    np.testing.assert_array_equal(second.found, first.found)

    # Different settings are a different entry, not a stale hit.
    with pytest.raises(AssertionError, match="decoded media on a cache hit"):
        video_face_track(video_with_audio, num_frames=11, cache=cache)


def test_image_faces_cache(astronaut_png, tmp_path):
    cache = FaceCache(tmp_path / "cache")
    first = image_faces(astronaut_png, cache=cache)
    detector = FaceDetector()
    second = image_faces(astronaut_png, cache=cache, detector=detector)
    assert detector.detect_calls == 0 and cache.hits == 1
    assert len(second) == 1 and second[0].primary
    np.testing.assert_allclose(second[0].landmarks_68, first[0].landmarks_68)


def test_damaged_cache_entry_is_recomputed(video_without_audio, tmp_path):
    cache = FaceCache(tmp_path / "cache")
    video_face_track(video_without_audio, num_frames=4, cache=cache)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    entry.write_bytes(b"garbage")
    track = video_face_track(video_without_audio, num_frames=4, cache=cache)
    assert track.found.all() and cache.misses == 2


def test_truncated_video_raises_through_the_decode_thread_and_caches_nothing(media_dir, tmp_path):
    from mllm.media import CorruptMediaError

    path = synthetic.write_video(media_dir / "long_faces.mkv", synthetic.face_frames(150), fps=25)
    data = path.read_bytes()
    cut = tmp_path / "cut_faces.mkv"
    cut.write_bytes(data[: len(data) // 2])
    cache = FaceCache(tmp_path / "cache")
    seen = []
    with pytest.raises(CorruptMediaError, match="cut_faces.mkv: truncated"):
        video_face_track(cut, cache=cache, progress=seen.append)
    assert seen and seen[-1] < 150  # frames before the cut were processed, then the error surfaced
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_landmarks_on_the_cut_out_face_equal_those_on_the_whole_image():
    """The predictor is handed only the face and a margin (half the cost); its points must not move."""
    import dlib

    from mllm.face import FaceDetector

    detector = FaceDetector()
    rgb = synthetic.astronaut()
    face = detector.detect(rgb)[0]
    for shift in (0.0, 3.3, -7.6):  # boxes as tracking hands them over: off the detector's grid
        box = face.box + shift
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        whole = detector._points(detector._predictor(rgb, dlib.rectangle(x0, y0, x1 - 1, y1 - 1)))
        np.testing.assert_array_equal(detector.landmarks(rgb, box), whole)


def test_faces_found_from_several_threads_at_once_equal_those_found_one_by_one():
    """The server renders requests side by side: dlib's shared models must survive threads (they corrupted memory
    before each call held a lock) and give each thread the answer it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from mllm.face import FaceDetector
    from mllm.samples.synthetic import astronaut

    rgb, rng = astronaut(), np.random.default_rng(0)
    crops = []
    for _ in range(24):
        size = int(rng.integers(200, 400))
        y, x = (int(v) for v in rng.integers(0, 512 - size, 2))
        crops.append(np.ascontiguousarray(rgb[y : y + size, x : x + size]))

    def landmarks(image):
        faces = FaceDetector().detect(image)
        return faces[0].landmarks_68 if faces else None

    alone = [landmarks(c) for c in crops]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(landmarks, crops * 2))
    for a, b in zip(alone * 2, together, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert sum(a is not None for a in alone) >= 12
