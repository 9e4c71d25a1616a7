"""Seam benchmark: milliseconds per sample through `build_inputs_embeds`, split by stage, tiny vs mid-size config.

    .venv/bin/python bench/seam.py [--repeats 5] [--frames 8]

One sample is a 2 s, 25 fps video of a real face with a speech/tone track, asked about in one user turn. Stages:
media (decode frames + audio), landmarks (tracking, cache off), processor (crops, normalisation, tokens), vision
(base vision tower + projector), face attention, audio (Wav2Vec2 + pooling + projector), text (embedding lookup
and writing the media tokens in place). The two configs are built offline with `make-tiny --size`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mllm.face import video_face_track  # noqa: E402
from mllm.media import load_video  # noqa: E402
from mllm.model import EmoReasonForConditionalGeneration  # noqa: E402
from mllm.model.modeling import _scatter  # noqa: E402
from mllm.processor import EmoReasonProcessor  # noqa: E402
from mllm.samples import synthetic  # noqa: E402
from mllm.samples.tiny import make_tiny  # noqa: E402

STAGES = ("media", "landmarks", "processor", "vision", "face attention", "audio", "text", "total seam")


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


@torch.no_grad()
def measure(model_dir: Path, video: Path, frames: int, repeats: int) -> dict[str, float]:
    model = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    processor = EmoReasonProcessor.from_pretrained(model_dir, frames_per_clip=frames, max_frames=max(frames, 32))
    processor.face_cache = False
    messages = [
        {"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "text", "text": "Why?"}]}
    ]
    row = {}
    row["media"], clip = _time(lambda: load_video(video, num_frames=frames), repeats)
    row["landmarks"], _ = _time(lambda: video_face_track(video, num_frames=frames, video=clip, cache=False), repeats)
    processor_ms, batch = _time(lambda: processor([messages]), repeats)
    row["processor"] = max(0.0, processor_ms - row["media"] - row["landmarks"])  # the processor decodes and tracks too
    adapter = model.adapter
    row["vision"], visual = _time(lambda: adapter.image_features(model.base, batch["pixel_values"]), repeats)
    row["face attention"], visual = _time(
        lambda: model.face_attention(visual, batch["image_landmarks"], batch["image_has_face"]), repeats
    )
    audio = batch["audio_values"][0, : int(batch["audio_lengths"][0])]
    row["audio"], audio_tokens = _time(lambda: model.audio_branch(audio, int(batch["audio_token_counts"][0])), repeats)

    def text():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        embeds = _scatter(embeds, batch["input_ids"], model.config.image_token_id, visual.flatten(0, 1), "image")
        return _scatter(embeds, batch["input_ids"], model.config.audio_token_id, audio_tokens, "audio")

    row["text"], _ = _time(text, repeats)
    row["total seam"], _ = _time(lambda: model.build_inputs_embeds(**batch), repeats)
    row["total seam"] += row["media"] + row["landmarks"] + row["processor"]
    row["_tokens"] = int(batch["input_ids"].shape[1])
    row["_params"] = sum(p.numel() for p in model.parameters()) / 1e6
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    console = Console()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio = synthetic.speech_or_tone("I am not sure how I feel about this at all.", 2.0)
        video = synthetic.write_video(tmp / "clip.mp4", synthetic.face_frames(50), fps=25, audio=audio)
        for size in ("tiny", "mid"):
            console.print(f"{size}: building random checkpoints, then timing ...")
            model_dir = make_tiny(tmp / size, size=size)
            rows[size] = measure(model_dir, video, args.frames, args.repeats)
    table = Table(title=f"ms per sample (video {args.frames} frames + 2 s audio), median of {args.repeats}")
    table.add_column("stage")
    for size, row in rows.items():
        table.add_column(f"{size} ({row['_params']:.1f}M params, {row['_tokens']} tokens)", justify="right")
    for stage in STAGES:
        table.add_row(stage, *(f"{rows[size][stage]:.1f}" for size in rows))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
