"""Fixtures shared by the training tests."""

import json

import pytest


@pytest.fixture(scope="session")
def av_data(tmp_path_factory, video_with_audio):
    """Two clips with a face and speech, in our schema (as `data build` writes it)."""
    from data_builders.cot import build_target
    from data_builders.schema import Sample, write_dataset
    from mllm.labels import label_space
    from mllm.output import question

    samples = []
    for i, label in enumerate(("Happiness", "Sadness")):
        part = {"type": "video", "video": str(video_with_audio)}
        aus = ["AU6", "AU12"] if label == "Happiness" else ["AU1", "AU4", "AU15"]
        sample = Sample(id=f"abaw/train/clip{i}", dataset="abaw", split="train", task="expr", expression=label,
                        video=str(video_with_audio), aus=aus)  # fmt: skip
        text = {"type": "text", "text": question("expr", label_space("abaw_expr"))}
        sample.prompt = [{"role": "user", "content": [part, text]}]
        sample.target, sample.target_grounding = build_target(sample.id, "expr", label, aus)
        samples.append(sample)
    out = tmp_path_factory.mktemp("av") / "data"
    write_dataset(samples, out, files={"build_report.json": json.dumps({"dataset": "abaw", "options": {}})})
    return out
