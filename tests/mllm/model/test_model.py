from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from mllm.export import language_model_lora_config
from mllm.model import EmoReasonForConditionalGeneration, FaceRegionGuidedAttention, get_adapter
from mllm.samples import synthetic

# tiny bases: 64 px images, 16 px patches, pixel shuffle 0.5 (InternVL), 2x2 pooling (OneVision); 56 px images, 14 px
# patches, 2x2 merger (Qwen2.5-VL); 64 px images, 16 px patches, 2x2 merger (Qwen3-VL)
TOKENS_PER_IMAGE = 4
BASES = ("internvl", "llava_onevision", "qwen2_5_vl", "qwen3_vl")  # served ones; qwen3_5 trains, is not served


def user(*parts):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "Which emotion?"}]}]


def count(batch, processor, token):
    return int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(token)).sum())


def test_image(tiny_model, tiny_processor, astronaut_png):
    batch = tiny_processor([user({"type": "image", "image": str(astronaut_png)})])
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert batch["image_has_face"].tolist() == [True]
    lm = batch["image_landmarks"]
    assert lm.shape == (1, 68, 2) and lm.dtype == torch.float32 and lm.min() >= 0 and lm.max() <= 1
    assert count(batch, tiny_processor, "<IMG_CONTEXT>") == TOKENS_PER_IMAGE
    assert "audio_values" not in batch
    embeds = tiny_model.build_inputs_embeds(**batch)
    assert embeds.shape == (*batch["input_ids"].shape, 128) and embeds.dtype == torch.float32


def test_video_with_audio(tiny_model, tiny_processor, video_with_audio):
    batch = tiny_processor([user({"type": "video", "video": str(video_with_audio)})])
    frames = tiny_processor.frames_per_clip
    assert batch["pixel_values"].shape == (frames, 3, 64, 64)
    assert batch["image_has_face"].all()
    assert count(batch, tiny_processor, "<IMG_CONTEXT>") == frames * TOKENS_PER_IMAGE
    # 2 s of audio at 2 tokens per second.
    assert batch["audio_lengths"].tolist() == [32000] and batch["audio_token_counts"].tolist() == [4]
    assert count(batch, tiny_processor, "<AUDIO_CONTEXT>") == 4
    assert tiny_model.build_inputs_embeds(**batch).shape[:2] == batch["input_ids"].shape


def test_video_without_audio_and_request_limits(tiny_model, tiny_processor, video_without_audio):
    batch = tiny_processor([user({"type": "video", "video": str(video_without_audio)})], limits={"frames": 3})
    assert batch["pixel_values"].shape[0] == 3 and "audio_values" not in batch
    assert count(batch, tiny_processor, "<AUDIO_CONTEXT>") == 0


def test_audio_only_from_file_and_array(tiny_model, tiny_processor, media_dir):
    path = synthetic.write_audio(media_dir / "voice.wav", synthetic.tone(220, 3.0))
    batch = tiny_processor(
        [user({"type": "audio", "audio": str(path)}), user({"type": "audio", "audio": synthetic.tone(220, 0.4)})],
        limits={"seconds": 2.5},
    )
    assert "pixel_values" not in batch
    assert batch["audio_lengths"].tolist() == [40000, 6400]  # the 3 s file cut to the 2.5 s limit
    assert batch["audio_token_counts"].tolist() == [5, 1]
    assert tiny_model.build_inputs_embeds(**batch).shape[:2] == batch["input_ids"].shape


def test_video_with_no_face_is_masked_not_a_crash(tiny_model, tiny_processor, video_no_face):
    batch = tiny_processor([user({"type": "video", "video": str(video_no_face)})])
    assert not batch["image_has_face"].any()
    embeds = tiny_model.build_inputs_embeds(**batch)
    assert torch.isfinite(embeds).all()


def test_mixed_batch(tiny_model, tiny_processor, astronaut_png, video_with_audio, video_no_face):
    conversations = [
        user({"type": "image", "image": str(astronaut_png)}),
        user({"type": "video", "video": str(video_with_audio)}),
        user({"type": "audio", "audio": synthetic.tone(440, 1.0)}),
        user({"type": "video", "video": str(video_no_face)}),
    ]
    batch = tiny_processor(conversations)
    frames = tiny_processor.frames_per_clip
    assert batch["pixel_values"].shape[0] == 1 + 2 * frames
    assert batch["image_has_face"].tolist() == [True] + [True] * frames + [False] * frames
    assert batch["audio_token_counts"].tolist() == [4, 2, 2]
    assert batch["attention_mask"][:, -1].all()  # left padding: every row ends with real tokens
    embeds = tiny_model.build_inputs_embeds(**batch)
    assert embeds.shape == (4, batch["input_ids"].shape[1], 128)
    # Each row gets its own media: the image row's embeddings equal those of the image alone.
    alone = tiny_processor([conversations[0]])
    row = embeds[0][batch["attention_mask"][0].bool()]
    torch.testing.assert_close(row, tiny_model.build_inputs_embeds(**alone)[0], atol=1e-5, rtol=1e-5)


def test_placeholder_count_mismatch_is_an_error(tiny_model, tiny_processor, astronaut_png):
    batch = tiny_processor([user({"type": "image", "image": str(astronaut_png)})])
    with pytest.raises(ValueError, match="4 image placeholder tokens in input_ids but 8 image embeddings"):
        tiny_model.build_inputs_embeds(
            **{
                **batch,
                "pixel_values": batch["pixel_values"].repeat(2, 1, 1, 1),
                "image_landmarks": batch["image_landmarks"].repeat(2, 1, 1),
                "image_has_face": batch["image_has_face"].repeat(2),
            }
        )
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model.build_inputs_embeds(batch["input_ids"])


def test_bad_content_parts(tiny_processor):
    with pytest.raises(ValueError, match="unknown content part type 'pdf'"):
        tiny_processor([user({"type": "pdf", "pdf": "x.pdf"})])
    with pytest.raises(ValueError, match="only local paths"):
        tiny_processor([user({"type": "image_url", "image_url": {"url": "http://example.invalid/a.png"}})])
    with pytest.raises(ValueError, match="placeholder tokens"):
        tiny_processor([user({"type": "text", "text": "<IMG_CONTEXT>"})])


def test_face_attention_starts_near_identity_and_skips_faceless_frames():
    torch.manual_seed(0)
    module = FaceRegionGuidedAttention(128, heads=4, gate_init=1e-2)
    visual = torch.randn(3, 16, 128)
    landmarks = torch.rand(3, 68, 2)
    out = module(visual, landmarks, torch.tensor([True, False, True]))
    torch.testing.assert_close(out[1], visual[1], atol=0, rtol=0)
    assert (out[0] - visual[0]).abs().max() < 0.1 * visual[0].abs().max()
    assert not torch.equal(out[0], visual[0])


def test_refused_and_unknown_bases():
    with pytest.raises(ValueError, match="M-RoPE"):
        get_adapter("qwen2_vl")
    with pytest.raises(ValueError, match="bidirectional"):
        get_adapter("gemma3")
    with pytest.raises(
        ValueError,
        match=r"unknown base model type 'bert'; supported: \['internvl', 'llava_onevision', 'qwen2_5_vl', "
        r"'qwen3_5', 'qwen3_vl'\]",
    ):
        get_adapter("bert")


def test_tokens_per_image_of_the_real_configurations():
    """One fixed tile per face crop or frame: InternVL3-1B's 448 px tile -> 256 tokens; LLaVA-OneVision's 384 px
    SigLIP tile (27x27 patches) pooled 2x2 as its video frames are -> 196 tokens."""
    from transformers import InternVLConfig, LlavaOnevisionConfig

    internvl, onevision = get_adapter("internvl"), get_adapter("llava_onevision")
    assert internvl.image_size(InternVLConfig()) == 448 and internvl.tokens_per_image(InternVLConfig()) == 256
    assert onevision.image_size(LlavaOnevisionConfig()) == 384
    assert onevision.tokens_per_image(LlavaOnevisionConfig()) == 196
    with pytest.raises(ValueError, match="needs the full patch grid"):
        onevision.tokens_per_image(LlavaOnevisionConfig(vision_feature_select_strategy="default"))


def test_qwen2_5_vl_face_crops_follow_the_image_processors_pixel_budget():
    """Qwen2.5-VL-7B's processor allows 12.8 MP: a face crop is 448 px, 32x32 patches merged 2x2 -> 256 tokens. A
    processor capped lower (max_pixels) gives the largest square of whole 28 px merged patches within it."""
    from types import SimpleNamespace

    from transformers import Qwen2_5_VLConfig

    qwen, config = get_adapter("qwen2_5_vl"), Qwen2_5_VLConfig()
    seven_b = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 12845056})
    assert qwen.image_size(config, seven_b) == 448 and qwen.tokens_per_image(config, 448) == 256
    capped = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 300 * 300})
    assert qwen.image_size(config, capped) == 280 and qwen.tokens_per_image(config, 280) == 100


def test_llava_onevision_from_base_adds_placeholders_and_keeps_tied_embeddings(tiny_llava_onevision_dir):
    """The OneVision tiny's tokenizer, like the real one, lacks the EmoReason placeholders: from_base adds them,
    grows the (tied) embeddings to match, and the composed checkpoint keeps the tie after loading."""
    from transformers import AutoTokenizer

    base_tokenizer = AutoTokenizer.from_pretrained(str(tiny_llava_onevision_dir / "base"))
    assert "<IMG_CONTEXT>" not in base_tokenizer.get_vocab()
    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_llava_onevision_dir / "emoreason"))
    assert model.config.base_config["model_type"] == "llava_onevision"
    embeddings = model.get_input_embeddings()
    assert embeddings.num_embeddings == len(base_tokenizer) + 6  # <img> </img> <IMG_CONTEXT> and the audio three
    assert model.base.lm_head.weight.data_ptr() == embeddings.weight.data_ptr()


def test_each_base_embeds_generates_and_round_trips(tiny_base_dir, video_with_audio, tmp_path):
    from mllm.processor import EmoReasonProcessor

    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_base_dir / "emoreason")).eval()
    processor = EmoReasonProcessor.from_pretrained(tiny_base_dir / "emoreason")
    batch = processor([user({"type": "video", "video": str(video_with_audio)})])
    frames, side = processor.frames_per_clip, processor.image_size
    assert batch["pixel_values"].shape == (frames, 3, side, side) and side in (56, 64)
    assert count(batch, processor, processor.image_tokens[1]) == frames * TOKENS_PER_IMAGE
    with torch.no_grad():
        embeds = model.build_inputs_embeds(**batch)
        logits = model(**batch).logits
    assert embeds.shape == (*batch["input_ids"].shape, 128) and torch.isfinite(embeds).all()
    assert model.generate(**batch, max_new_tokens=3, do_sample=False).shape[0] == 1
    model.save_pretrained(tmp_path / "copy")
    with torch.no_grad():
        again = AutoModel.from_pretrained(str(tmp_path / "copy")).eval()(**batch).logits
    torch.testing.assert_close(again, logits, atol=0, rtol=0)


def test_save_and_load_give_identical_logits(tiny_model, tiny_processor, tiny_dir, video_with_audio, tmp_path):
    batch = tiny_processor([user({"type": "video", "video": str(video_with_audio)})])
    with torch.no_grad():
        before = tiny_model(**batch).logits
    tiny_model.save_pretrained(tmp_path / "copy")
    loaded = AutoModel.from_pretrained(str(tmp_path / "copy")).eval()
    assert isinstance(loaded, EmoReasonForConditionalGeneration)
    with torch.no_grad():
        after = loaded(**batch).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_one_step_changes_every_trainable_parameter_and_no_frozen_one(tiny_base_dir, video_with_audio):
    from peft import get_peft_model

    from mllm.processor import EmoReasonProcessor

    tiny_processor = EmoReasonProcessor.from_pretrained(tiny_base_dir / "emoreason")
    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_base_dir / "emoreason"))
    model.freeze_base()
    peft_model = get_peft_model(model, language_model_lora_config(model, r=4))
    model.set_trainable_new_modules(True)  # PEFT froze everything but LoRA
    # LoRA B starts at zero, so A gets no gradient on the first step; start B small instead.
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    conversation = user({"type": "video", "video": str(video_with_audio)}) + [
        {"role": "assistant", "content": "<think>Cheeks raised.</think><answer>Happiness</answer>"}
    ]
    batch = tiny_processor([conversation], return_labels=True)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("face_attention" in n for n in trainable)
    assert any("audio_branch.projector" in n for n in trainable)
    assert any("multi_modal_projector" in n or "visual.merger" in n for n in trainable)
    assert not any("audio_branch.encoder" in n or "vision_tower" in n or "visual.blocks" in n for n in trainable)
    assert not any("visual" in n and "lora" in n for n in trainable)  # LoRA on the language model only
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model(**batch).loss.backward()
    optimizer.step()
    for name, p in peft_model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"


def test_labels_cover_only_the_assistant_turn(tiny_processor):
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "How does she feel?"}]},
        {"role": "assistant", "content": "<think>Smiling.</think><answer>Happiness</answer>"},
    ]
    batch = tiny_processor([conversation], return_labels=True)
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tiny_processor.tokenizer.decode(labelled) == "<think>Smiling.</think><answer>Happiness</answer><|im_end|>"


def test_generate_returns_new_tokens(tiny_model, tiny_processor, astronaut_png):
    batch = tiny_processor([user({"type": "image", "image": str(astronaut_png)})])
    out = tiny_model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 5) or (out.shape[0] == 1 and out.shape[1] <= 5)
    assert np.issubdtype(out.numpy().dtype, np.integer)


def test_dtype_is_respected(tiny_dir, tiny_processor, video_with_audio):
    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_dir / "emoreason"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    batch = tiny_processor([user({"type": "video", "video": str(video_with_audio)})])  # float32 media tensors
    embeds = model.build_inputs_embeds(**batch)
    assert embeds.dtype == torch.bfloat16 and torch.isfinite(embeds.float()).all()
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1


def test_limits_are_validated_and_cut_the_video_window(tiny_processor, video_with_audio):
    with pytest.raises(ValueError, match="limits take positive"):
        tiny_processor([user({"type": "text", "text": "hi"})], limits={"frames": 0})
    with pytest.raises(ValueError, match="limits take positive"):
        tiny_processor([user({"type": "text", "text": "hi"})], limits={"minutes": 1})
    with pytest.raises(ValueError, match="no conversations"):
        tiny_processor([])
    batch = tiny_processor([user({"type": "video", "video": str(video_with_audio)})], limits={"seconds": 1.0})
    assert batch["audio_lengths"].tolist() == [16000]  # 1 s of the 2 s clip


def test_face_cache_entries_follow_the_decoded_window(tiny_processor, video_without_audio):
    import os

    cache = Path(os.environ["EMOREASON_CACHE"]) / "faces"
    before = set(cache.rglob("*.npz"))
    part = {"type": "video", "video": str(video_without_audio)}
    tiny_processor([user(part)], limits={"seconds": 1.0, "frames": 5})
    tiny_processor([user(part)], limits={"seconds": 2.0, "frames": 5})
    assert len(set(cache.rglob("*.npz")) - before) == 2  # two windows, two entries: never one window's landmarks
