"""An ABAW expression dataset with real face crops, in the official layout, built with `emoreason data build abaw`."""

import pytest

from mllm.samples import synthetic

HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
FRAMES = 40  # per video: clips 1-16, 17-32 and 25-40 (the last aligned to the end: frames 25-32 overlap)


def expr_codes(video: int) -> list[int]:
    """Per frame: one expression per 16 frames, a few invalid frames (-1) in the second clip."""
    codes = [(video * 3 + i // 16) % 7 for i in range(FRAMES)]
    codes[18:21] = [-1, -1, -1]
    return codes


@pytest.fixture(scope="session")
def abaw_expr_data(tmp_path_factory):
    from mllm.cli import main as emoreason
    from mllm.face import DetectorSettings, FaceDetector, align_face

    root = tmp_path_factory.mktemp("abaw")
    detector = FaceDetector(DetectorSettings(min_face_fraction=0.0))
    faces = [align_face(f, detector.detect(f)[0].landmarks_68, size=112).crop for f in synthetic.face_frames(4)]
    clip = synthetic.write_video(root / "clip.mp4", synthetic.face_frames(FRAMES, size=(96, 128)), fps=30.0,
                                 audio=synthetic.speech_or_tone("Well, I suppose so.", FRAMES / 30.0))  # fmt: skip
    for v in range(2):
        name = f"vid{v}"
        ann = root / "tree" / "EXPR_Recognition_Challenge" / "Validation_Set" / f"{name}.txt"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(HEADER + "\n" + "\n".join(map(str, expr_codes(v))) + "\n")
        crops = root / "tree" / "cropped_aligned" / name
        crops.mkdir(parents=True)
        for i in range(FRAMES):
            synthetic.write_image(crops / f"{i + 1:05d}.jpg", faces[(v + i) % len(faces)])
        (root / "tree" / "videos").mkdir(exist_ok=True)
        (root / "tree" / "videos" / f"{name}.mp4").write_bytes(clip.read_bytes())
    out = root / "data"
    assert emoreason(["data", "build", "abaw", "--root", str(root / "tree"), "--task", "expr", "--out", str(out)]) == 0
    return out
