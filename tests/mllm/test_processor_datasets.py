"""Every data builder's rows go through the processor and the model seam unchanged.

The builders' fixture trees (tests/data_builders/layouts.py) get real media: aligned face crops and photographs of
the astronaut, and videos of her with a voice-like tone. Each row's `prompt`, as stored in the dataset (JSON), is
processed as it is and embedded by `build_inputs_embeds`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from data_builders import get_builder
from data_builders.common import BuildOptions, BuildReport
from mllm.face import DetectorSettings, FaceDetector, align_face
from mllm.media import MediaNotFoundError
from mllm.samples import synthetic
from tests.conftest import FPS
from tests.data_builders import layouts

BAH_FRAMES = 205  # BAH's frame-level fixture labels frame 200


@pytest.fixture(scope="module")
def faces():
    """Eight aligned 112x112 crops of the astronaut as she drifts across the frame (ABAW's cropped_aligned)."""
    frames = synthetic.face_frames(8)
    detector = FaceDetector(DetectorSettings(min_face_fraction=0.0))
    return [align_face(f, detector.detect(f)[0].landmarks_68, size=112).crop for f in frames]


@pytest.fixture(scope="module")
def bah_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bah_media")
    frames = synthetic.face_frames(BAH_FRAMES, size=(240, 320))
    return synthetic.write_video(folder / "v.mp4", frames, fps=FPS, audio=synthetic.tone(220, BAH_FRAMES / FPS))


def _fill(paths, write):
    paths = sorted(paths)
    assert paths
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, i)


def _build(name, root, **options):
    """The builder's rows, one per distinct prompt (DFEW and MAFW list each clip in five folds: the same prompt
    five times), with each row's prompt as the dataset stores it (JSON) and as the processor gets it."""
    report = BuildReport()
    samples = get_builder(name)(BuildOptions(root=root, **options), report)
    assert samples
    distinct = {}
    for sample in samples:
        distinct.setdefault(sample.to_row()["prompt"], sample)
    return [json.loads(row) for row in distinct], list(distinct.values())


def _through_the_seam(model, processor, prompts):
    batch = processor(prompts)
    with torch.no_grad():
        embeds = model.build_inputs_embeds(**batch)
    assert embeds.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(embeds).all()
    return batch


def _images(batch) -> int:
    return 0 if "pixel_values" not in batch else batch["pixel_values"].shape[0]


def test_abaw_frames_lists_with_crops_and_audio(tmp_path, tiny_model, tiny_processor, faces, video_with_audio):
    root = layouts.abaw_mtl(layouts.abaw_tree(tmp_path / "abaw"))
    _fill((root / "cropped_aligned").rglob("*.jpg"), lambda p, i: synthetic.write_image(p, faces[i % len(faces)]))
    _fill((root / "videos").rglob("*.mp4"), lambda p, i: shutil.copyfile(video_with_audio, p))
    prompts, samples = _build("abaw", root)
    assert {s.subject for s in samples} == {"vidA", "vidC_left", "vidC_right", "vidM"}
    assert all(p[0]["content"][0]["frames"] for p in prompts)
    batch = _through_the_seam(tiny_model, tiny_processor, prompts)
    per_clip = [min(len(s.frames), tiny_processor.frames_per_clip) for s in samples]
    assert _images(batch) == sum(per_clip)
    assert batch["image_has_face"].all()  # landmarks on every crop, from the whole crop as the face box
    with_video = [s for s in samples if s.video]
    assert {s.subject for s in with_video} == {"vidA", "vidC_left", "vidC_right"}  # vidM has no raw video
    # Audio over each clip's frames: 16 frames at 25 fps are 0.64 s of the raw video's track.
    expected = [round((s.frame_indices[-1] - s.frame_indices[0] + 1) / FPS * 16000) for s in with_video]
    assert batch["audio_lengths"].tolist() == expected


def test_abaw_crop_text_and_cache(tmp_path, tiny_processor, faces, video_with_audio):
    root = layouts.abaw_tree(tmp_path / "abaw")
    _fill((root / "cropped_aligned").rglob("*.jpg"), lambda p, i: synthetic.write_image(p, faces[i % len(faces)]))
    _fill((root / "videos").rglob("*.mp4"), lambda p, i: shutil.copyfile(video_with_audio, p))
    prompts, samples = _build("abaw", root, tasks=("expr",))
    second = next(i for i, s in enumerate(samples) if s.frame_indices[0] == 17)
    text = tiny_processor.tokenizer.decode(tiny_processor([prompts[second]])["input_ids"][0])
    # Frames 17-32 keep 8 of 16 (every other one); frame n plays at (n - 1) / 25 s.
    assert "Frame 1 at 0.7s:" in text and "Frame 8 at 1.2s:" in text and "Audio:" in text
    from mllm.face import FaceCache
    from mllm.face.crops import crop_landmarks

    cache = FaceCache(tmp_path / "cache")
    crop = root / "cropped_aligned" / "vidA" / "00017.jpg"
    first = crop_landmarks(crop, cache=cache)
    assert cache.hits == 0 and crop_landmarks(crop, cache=cache).tolist() == first.tolist() and cache.hits == 1
    # A missing crop in a hand-written prompt is refused, naming the file and the part.
    part = dict(prompts[second][0]["content"][0], frames=[str(root / "nope.jpg")] * 16)
    with pytest.raises(MediaNotFoundError, match=r"conversation 0, message 0, content part 0 \(video\): .*nope\.jpg"):
        tiny_processor([[{"role": "user", "content": [part]}]])


def test_bah_windows_and_frame_numbers(tmp_path, tiny_model, tiny_processor, bah_video):
    root = layouts.bah_tree(tmp_path / "bah")
    _fill((root / "videos").rglob("*.mp4"), lambda p, i: shutil.copyfile(bah_video, p))
    prompts, samples = _build("bah", root)
    batch = _through_the_seam(tiny_model, tiny_processor, prompts)
    assert batch["image_has_face"].all()
    by_id = {s.id: i for i, s in enumerate(samples)}
    lengths = batch["audio_lengths"].tolist()
    assert lengths[by_id["bah/train/v1/0.50-2.25"]] == round(1.75 * 16000)  # the segment's window, not the file
    assert lengths[by_id["bah/train/v1/3.00-4.50"]] == round(1.5 * 16000)
    assert lengths[by_id["bah/train/v1"]] == round(BAH_FRAMES / FPS * 16000)
    # Frames by number: 12, 13 and 200 play at 0.44, 0.48 and 7.96 s; audio spans frames 12-200.
    frames_row = by_id["bah/train/v1/frames"]
    assert lengths[frames_row] == round((200 - 12 + 1) / FPS * 16000)
    text = tiny_processor.tokenizer.decode(tiny_processor([prompts[frames_row]])["input_ids"][0])
    assert "Frame 1 at 0.4s:" in text and "Frame 2 at 0.5s:" in text and "Frame 3 at 8.0s:" in text
    assert "Frame 4" not in text


@pytest.mark.parametrize("name", ["rafdb", "affectnet"])
def test_image_datasets(tmp_path, tiny_model, tiny_processor, faces, name):
    root = getattr(layouts, f"{name}_tree")(tmp_path / name)
    prompts, samples = _build(name, root)
    for sample in samples:  # every listed image, including the ones the fixture leaves missing
        face = faces[len(sample.id) % len(faces)]
        synthetic.write_image(_mkdir(sample.image), face if name == "rafdb" else _photo(face))
    batch = _through_the_seam(tiny_model, tiny_processor, prompts)
    assert _images(batch) == len(samples) and batch["image_has_face"].all()


@pytest.mark.parametrize("name", ["dfew", "mafw"])
def test_video_datasets(tmp_path, tiny_model, tiny_processor, video_with_audio, name):
    root = getattr(layouts, f"{name}_tree")(tmp_path / name)
    _fill(root.rglob("*.mp4"), lambda p, i: shutil.copyfile(video_with_audio, p))
    prompts, samples = _build(name, root)
    assert len(samples) == 3  # three clips, each in five folds
    batch = _through_the_seam(tiny_model, tiny_processor, prompts)
    assert _images(batch) == len(samples) * tiny_processor.frames_per_clip and batch["image_has_face"].all()
    assert batch["audio_lengths"].tolist() == [32000] * len(samples)


def _mkdir(path):
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def _photo(face: np.ndarray) -> np.ndarray:
    """The crop placed in a larger photograph, as AffectNet's images are."""
    canvas = np.full((224, 224, 3), 90, np.uint8)
    canvas[56:168, 56:168] = face
    return canvas


def test_processor_face_detector_setting_reaches_detection_and_round_trips(tiny_processor, tmp_path):
    """`face_detector` (saved with the processor): `hog` misses a tilted face with a covered brow, `auto`'s cascade
    finds it; an unknown value is refused."""
    import copy

    from mllm.processor import EmoReasonProcessor

    photo = next(p for p in synthetic.face_photos(lfw=1) if p.name == "lfw000")
    path = synthetic.write_image(tmp_path / "tilted.png", synthetic.face_variants(photo)["tilted 20 + brow"])
    found = {}
    for detector in ("hog", "auto"):
        processor = copy.copy(tiny_processor)
        processor.face_detector = detector
        batch = processor([[{"role": "user", "content": [{"type": "image", "image": str(path)}]}]])
        found[detector] = bool(batch["image_has_face"][0])
    assert found == {"hog": False, "auto": True}

    processor = copy.copy(tiny_processor)
    processor.face_detector = "cnn"
    processor.save_pretrained(tmp_path / "saved")
    assert EmoReasonProcessor.from_pretrained(tmp_path / "saved").face_detector == "cnn"
    with pytest.raises(ValueError, match="face_detector"):
        EmoReasonProcessor.from_pretrained(tmp_path / "saved", face_detector="magic")
