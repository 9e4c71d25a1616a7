"""Learning tests: the tiny model of each base, briefly trained, learns a label carried only by the audio, or only by
the face geometry; with that pathway cut, it is at chance (the two classes then look identical to the model).

Each runs on 3 seeds, and must pass with every CPU kernel set (run them under ATEN_CPU_CAPABILITY=default and =avx2
too: CI machines differ)."""

import numpy as np
import pytest
import torch

from mllm.export import language_model_lora_config
from mllm.face import align_face, image_faces
from mllm.face.regions import INNER_LIPS, JAW, OUTER_LIPS
from mllm.model import EmoReasonForConditionalGeneration
from mllm.samples import synthetic

LABELS = ("Sadness", "Happiness")
STEPS = 40
FACE_STEPS = 250
SEEDS = [0, 1, 2]


def _trainable_model(tiny_dir, seed=0):
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_dir / "emoreason"))
    model.freeze_base()
    peft_model = get_peft_model(model, language_model_lora_config(model, r=8))
    model.set_trainable_new_modules(True)
    return model, peft_model


def _conversation(part, label=None):
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Which emotion?"}]}]
    if label is not None:
        messages.append({"role": "assistant", "content": label})
    return messages


def _train(peft_model, batches, steps=STEPS, lr=3e-3):
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = peft_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    peft_model.eval()
    return losses


@torch.no_grad()
def _accuracy(peft_model, candidates_per_sample, truth) -> float:
    """Pick, per sample, the label whose completion is the more likely (summed token log-likelihood)."""
    correct = 0
    for candidates, y in zip(candidates_per_sample, truth, strict=True):
        losses = [float(peft_model(**b).loss) * int((b["labels"][:, 1:] != -100).sum()) for b in candidates]
        correct += int(np.argmin(losses) == y)
    return correct / len(truth)


# ---------------------------------------------------------------------------------------------------------------
# Audio


def _tone(rng, label):
    frequency = 250.0 if label == 0 else 1000.0
    t = np.arange(16_000) / 16_000
    tone = rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * frequency * rng.uniform(0.95, 1.05) * t + rng.uniform(0, 6.3))
    return (tone + rng.normal(0, 0.02, t.shape)).astype(np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_audio_only_label_is_learned_and_lost_without_the_audio_branch(tiny_base_dir, tiny_base_processor, seed):
    tiny_processor = tiny_base_processor
    rng = np.random.default_rng(seed)
    model, peft_model = _trainable_model(tiny_base_dir, seed=seed)
    train = []
    for _ in range(6):
        ys = rng.permutation([0, 1] * 4)
        convs = [_conversation({"type": "audio", "audio": _tone(rng, y)}, LABELS[y]) for y in ys]
        train.append(tiny_processor(convs, return_labels=True))
    truth = [0, 1] * 10
    clips = [_tone(rng, y) for y in truth]
    candidates = [
        [
            tiny_processor([_conversation({"type": "audio", "audio": clip}, label)], return_labels=True)
            for label in LABELS
        ]
        for clip in clips
    ]
    losses = _train(peft_model, train)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) * 0.5
    assert _accuracy(peft_model, candidates, truth) >= 0.9

    hook = model.audio_branch.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    try:
        assert _accuracy(peft_model, candidates, truth) == pytest.approx(0.5)
    finally:
        hook.remove()


# ---------------------------------------------------------------------------------------------------------------
# Face geometry


def _mouth(landmarks_01: np.ndarray, open_mouth: bool, rng) -> np.ndarray:
    """Landmarks with the mouth opened (lower lip and chin dropped) or closed (inner lips together)."""
    points = landmarks_01.copy()
    inner_top, inner_bottom = [61, 62, 63], [65, 66, 67]
    lower_outer = [55, 56, 57, 58, 59]
    if open_mouth:
        drop = rng.uniform(0.06, 0.09)
        points[inner_bottom, 1] += drop
        points[lower_outer, 1] += drop
        points[list(JAW)[5:12], 1] += drop * 0.7
    else:
        middle = (points[inner_top, 1] + points[inner_bottom, 1]) / 2
        points[inner_top, 1] = middle
        points[inner_bottom[::-1], 1] = middle
    points += rng.normal(0, 0.004, points.shape)  # annotation jitter
    return np.clip(points, 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_face_geometry_label_is_learned_and_lost_without_face_attention(
    tiny_base_dir, tiny_base_processor, astronaut_png, seed
):
    assert set(INNER_LIPS) and set(OUTER_LIPS)  # the regions the task lives in
    tiny_processor = tiny_base_processor
    rng = np.random.default_rng(seed)
    model, peft_model = _trainable_model(tiny_base_dir, seed=seed)
    face = image_faces(astronaut_png, cache=False)[0]
    template = align_face(synthetic.astronaut(), face.landmarks_68, size=64).landmarks_01
    part = {"type": "image", "image": str(astronaut_png)}

    base = {label: tiny_processor([_conversation(part, label)], return_labels=True) for label in LABELS}

    def with_landmarks(batch, points_list):
        n = len(points_list)
        out = {
            k: (v.repeat(n, *[1] * (v.dim() - 1)) if k in ("input_ids", "attention_mask", "labels") else v)
            for k, v in batch.items()
        }
        out["pixel_values"] = batch["pixel_values"].repeat(n, 1, 1, 1)  # the same picture for every sample
        out["image_landmarks"] = torch.from_numpy(np.stack(points_list))
        out["image_has_face"] = torch.ones(n, dtype=torch.bool)
        return out

    train = []
    for _ in range(6):
        ys = rng.permutation([0, 1] * 4)
        for y in (0, 1):  # one batch per label text, geometry varying within it
            points = [_mouth(template, bool(y), rng) for _ in ys if _ == y]
            train.append(with_landmarks(base[LABELS[y]], points))
    truth = [0, 1] * 10
    eval_points = [_mouth(template, bool(y), rng) for y in truth]
    candidates = [[with_landmarks(base[label], [p]) for label in LABELS] for p in eval_points]

    # The face pathway starts near identity (gate 0.01): the model first learns the label prior, then the geometry
    # (after 100-150 steps with region tokens that describe each region's own shape; 350 to over 600 before).
    losses = _train(peft_model, train, steps=FACE_STEPS)
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) * 0.5
    assert _accuracy(peft_model, candidates, truth) >= 0.9

    # Disabled face attention: frames count as faceless, so the module passes visual tokens through unchanged.
    blind = [[{**b, "image_has_face": torch.zeros_like(b["image_has_face"])} for b in c] for c in candidates]
    assert _accuracy(peft_model, blind, truth) == pytest.approx(0.5)
