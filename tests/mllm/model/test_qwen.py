"""The Qwen-VL bases (Qwen2.5-VL, Qwen3-VL, Qwen3.5): their image layout and their M-RoPE positions in training and
`generate` (mllm.model.bases)."""

import numpy as np
import pytest
import torch

from mllm.model import EmoReasonForConditionalGeneration
from mllm.processor import EmoReasonProcessor

QWEN_BASES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")


@pytest.fixture(scope="module", params=QWEN_BASES)
def qwen_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    folder = qwen_dir / "emoreason"
    return EmoReasonForConditionalGeneration.from_pretrained(str(folder)).eval(), EmoReasonProcessor.from_pretrained(
        folder
    )


def _ask(*parts, text="Which emotion?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_patches_are_laid_out_as_the_bases_image_processor_lays_them(qwen_dir):
    """Our processor gives each face crop as (3, S, S) pixels; the adapter cuts them into the vision tower's patches
    in the order Qwen's own image processor does (2x2 merge windows, the image repeated over the temporal patch)."""
    from transformers import AutoConfig, AutoImageProcessor

    from mllm.model.bases import get_adapter

    config = AutoConfig.from_pretrained(str(qwen_dir / "base"))
    own = AutoImageProcessor.from_pretrained(str(qwen_dir / "base"), backend="pil")
    patch = config.vision_config.patch_size  # 14 (Qwen2.5-VL), 16 (Qwen3-VL)
    images = np.random.default_rng(0).normal(size=(2, 3, 4 * patch, 4 * patch)).astype(np.float32)
    flat, grid = get_adapter(config.model_type).patches(config, torch.from_numpy(images))
    expected = np.concatenate(
        [own.patchify(i, patch_size=patch, merge_size=2, temporal_patch_size=2)[0] for i in images]
    )
    np.testing.assert_array_equal(flat.numpy(), expected)
    assert grid.tolist() == [[1, 4, 4], [1, 4, 4]]


def _expected_positions(ids: list[int], image_id: int, audio_id: int) -> np.ndarray:
    """M-RoPE positions written out by hand: text advances all three axes by one; an image of g x g merged tokens
    starting at p takes (p, p + row, p + column) and the text after it starts at p + g; an audio strip of n tokens
    takes (p, p, p + k) and the text after it starts at p + n."""
    out, i, p = [], 0, 0
    while i < len(ids):
        if ids[i] not in (image_id, audio_id):
            out.append((p, p, p))
            p, i = p + 1, i + 1
            continue
        j = i
        while j < len(ids) and ids[j] == ids[i]:
            j += 1
        n = j - i
        if ids[i] == image_id:
            g = int(round(n**0.5))
            out += [(p, p + k // g, p + k % g) for k in range(n)]
            p += g
        else:
            out += [(p, p, p + k) for k in range(n)]
            p += n
        i = j
    return np.array(out).T


def test_positions_follow_each_images_grid_and_each_audio_strip(qwen, video_with_audio, astronaut_png):
    model, processor = qwen
    batch = processor(
        [
            _ask({"type": "video", "video": str(video_with_audio)}),
            _ask({"type": "image", "image": str(astronaut_png)}, text="And here, what is the expression?"),
        ]
    )
    positions = model.position_ids(batch["input_ids"], batch["attention_mask"])
    assert positions.shape == (3, *batch["input_ids"].shape)
    for row in range(2):
        kept = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][kept].tolist()
        want = _expected_positions(ids, model.config.image_token_id, model.config.audio_token_id)
        np.testing.assert_array_equal(positions[:, row][:, kept].numpy(), want)
    # 8 frames and 4 audio tokens: the first row's last position is far below its length (M-RoPE compresses media).
    first = batch["attention_mask"][0].bool()
    assert int(positions[:, 0][:, first].max()) + 1 < int(first.sum())


def test_generate_follows_the_positions_of_a_full_forward(qwen, video_with_audio):
    """`generate` (cached, each new token after the prompt's last position) gives the tokens a full forward over the
    growing sequence gives with positions recomputed each time: the positions of decoding are right."""
    model, processor = qwen
    batch = processor([_ask({"type": "video", "video": str(video_with_audio)})])
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)[0].tolist()
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    ids, tokens = batch["input_ids"], []
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], 1), **media).logits
            tokens.append(int(logits[0, -1].argmax()))
    assert generated == tokens


def test_text_positions_for_the_media_change_the_output(qwen, video_with_audio):
    """The negative control: the same embeddings at 1-D text positions give other logits, so the checks above
    (and the serving parity) would catch a path that dropped the 3-D positions."""
    model, processor = qwen
    batch = processor([_ask({"type": "video", "video": str(video_with_audio)})])
    length = batch["input_ids"].shape[1]
    text_positions = torch.arange(length).view(1, 1, -1).expand(3, 1, length)
    with torch.no_grad():
        mrope = model(**batch).logits
        again = model(**batch, position_ids=model.position_ids(batch["input_ids"], batch["attention_mask"])).logits
        flat = model(**batch, position_ids=text_positions).logits
    torch.testing.assert_close(again, mrope)
    assert (flat - mrope).abs().max() > 1e-3


def test_training_path_sees_the_same_positions_as_forward(qwen, video_with_audio):
    """TRL's trainers run `model.base_model(...)` and the LM head themselves: that path gets the M-RoPE positions
    too."""
    model, processor = qwen
    batch = processor([_ask({"type": "video", "video": str(video_with_audio)})])
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
        logits = model(**batch).logits
    torch.testing.assert_close(model.get_output_embeddings()(hidden), logits)


def test_qwen3_5_trains_here_but_is_refused_for_serving_with_the_reason(tiny_qwen3_5_dir, tmp_path):
    """vLLM's CPU build runs Qwen3.5's linear attention in bfloat16 only ("CPU GDN attention requires BF16"); there
    its greedy tokens part from transformers' after 2 of 12 on the tiny checkpoint. Export (and so the engine,
    `analyze`, `serve`) refuses it in one line saying why, before writing anything."""
    from mllm.export import export_for_serving

    with pytest.raises(ValueError, match="not served: vLLM's CPU build runs its linear attention in bfloat16 only"):
        export_for_serving(tiny_qwen3_5_dir / "emoreason", tmp_path / "served")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
