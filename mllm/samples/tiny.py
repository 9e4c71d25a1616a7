"""`emoreason make-tiny OUT [--base internvl|llava_onevision]`: tiny random checkpoints built offline, in the on-disk
formats of the real ones.

    OUT/base/       the base MLLM (vision tower, projector, Qwen2 language model with head_dim 64 as vLLM's CPU
                    attention needs), its tokenizer with a chat template, and its image processor config:
                    `internvl` (default) an InternVL-hf model, its tokenizer already holding the EmoReason
                    placeholder tokens; `llava_onevision` a LLaVA-OneVision-hf model (SigLIP, tied embeddings as in
                    the 0.5B), its tokenizer with only the base's own `<image>`/`<video>` tokens, so `from_base`
                    adds the placeholders and resizes the embeddings as it does for the real checkpoint
    OUT/audio/      a Wav2Vec2 model and its feature extractor config
    OUT/emoreason/  the composed EmoReason model (`from_pretrained` loads it), with its processor
    OUT/sample.mp4  a 2 s clip of a real face with speech, to try the commands on

OUT follows the output rules (`mllm.outputs.claim_output_dir`): new, empty, or written by make-tiny before; each
part is written under a temporary name and renamed into place. Tests and the README's offline example use it; real
runs point the same code at hub ids or local paths.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

HELP = "Build tiny random checkpoints (base MLLM, Wav2Vec2, composed EmoReason model) offline, for tests and demos."

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]

_CORPUS = """The person raises the inner brows and lowers the lip corners, which reads as sadness.
Cheeks raised and lip corners pulled up: a Duchenne smile, happiness. Brows lowered and lips pressed: anger.
Upper lip raised and nose wrinkled suggest disgust. Raised brows and widened eyes with a dropped jaw: surprise.
Brows raised and drawn together, lips stretched: fear. No action units active: a neutral expression.
<think> Observations: AU1 inner brow raiser, AU4 brow lowerer, AU6 cheek raiser, AU12 lip corner puller,
AU25 lips part, AU26 jaw drop. The voice is loud and fast; the speaker hesitates. </think>
<answer> Neutral Anger Disgust Fear Happiness Sadness Surprise Other Contempt present absent </answer>
valence=0.25, arousal=-0.50 AU1, AU2, AU4, AU6, AU7, AU10, AU12, AU15, AU23, AU24, AU25, AU26 none
Describe the facial expression in the video. What emotion does the speaker show? Answer with one label.
0 1 2 3 4 5 6 7 8 9 . , : ; - = ( ) / ? !
"""


def build_tokenizer(vocab_size: int = 512, extra_special_tokens: tuple[str, ...] | None = None):
    """A byte-level BPE tokenizer trained on a few sentences, with the chat template and the special tokens
    `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` plus `extra_special_tokens` (default: InternVL's image tokens and
    the EmoReason placeholders)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mllm.config import AUDIO_PLACEHOLDERS

    if extra_special_tokens is None:
        extra_special_tokens = (*SPECIAL_TOKENS[3:], *AUDIO_PLACEHOLDERS)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS[:3], *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=list(extra_special_tokens),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# Sizes: "tiny" for tests; "mid" for benchmarks (widths of a ~0.5B language model and of wav2vec2-base, fewer layers).
SIZES = {
    "tiny": {
        "image_size": 64,
        "patch": 16,
        "vision_hidden": 64,
        "vision_layers": 2,
        "lm_hidden": 128,
        "lm_layers": 2,
        "lm_heads": 2,
        "lm_ffn": 256,
        "audio_hidden": 64,
        "audio_layers": 2,
        "audio_conv": 32,
    },
    "mid": {
        "image_size": 224,
        "patch": 14,
        "vision_hidden": 384,
        "vision_layers": 6,
        "lm_hidden": 896,
        "lm_layers": 6,
        "lm_heads": 14,
        "lm_ffn": 2432,
        "audio_hidden": 768,
        "audio_layers": 4,
        "audio_conv": 512,
    },
}


def _text_config(tokenizer, s: dict, tie_word_embeddings: bool = False) -> dict:
    """A Qwen2 language model config. head_dim 64: vLLM's CPU attention supports it."""
    return {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": s["lm_hidden"],
        "intermediate_size": s["lm_ffn"],
        "num_hidden_layers": s["lm_layers"],
        "num_attention_heads": s["lm_heads"],
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": tie_word_embeddings,
        # Wider than the usual 0.02: with a frozen random head of that scale the largest reachable logit is
        # about 2.5, so even a perfect LoRA could not bring the loss below ~3.7 on a 512-token vocabulary.
        "initializer_range": 0.1,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }


def _save_base(model, tokenizer, image_processor, out: Path) -> None:
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)


def build_internvl_base(out: Path, size: str = "tiny", seed: int = 0):
    """A random InternVL-hf model. "tiny": 64x64 images, 16 px patches, pixel shuffle 0.5 -> 4 visual tokens."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from mllm.model.bases import image_processor_class

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    s = SIZES[size]
    image_size = s["image_size"]
    config = InternVLConfig(
        vision_config={
            "hidden_size": s["vision_hidden"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": max(2, s["vision_hidden"] // 64),
            "intermediate_size": 2 * s["vision_hidden"],
            "image_size": [image_size, image_size],
            "patch_size": [s["patch"], s["patch"]],
        },
        text_config=_text_config(tokenizer, s),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(image_size // s["patch"]) ** 2 // 4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config)
    image_processor = image_processor_class("GotOcr2ImageProcessor")(
        size={"height": image_size, "width": image_size}, crop_to_patches=False, do_convert_rgb=True
    )
    _save_base(model, tokenizer, image_processor, out)
    return model


def build_llava_onevision_base(out: Path, size: str = "tiny", seed: int = 0):
    """A random LLaVA-OneVision-hf model: SigLIP (no pooling head), 2-layer MLP projector, Qwen2 LM with tied
    embeddings (as in llava-onevision-qwen2-0.5b-ov-hf). "tiny": 64x64 images, 16 px patches -> a 4x4 grid, pooled
    2x2 -> 4 visual tokens. The tokenizer holds only the base's own `<image>` / `<video>` tokens."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from mllm.model.bases import image_processor_class

    tokenizer = build_tokenizer(extra_special_tokens=("<image>", "<video>"))
    torch.manual_seed(seed)
    s = SIZES[size]
    image_size = s["image_size"]
    # OneVision's anyres grid for single images, scaled to the tiny tile (unused by EmoReason; kept for the format).
    pinpoints = [[image_size * h, image_size * w] for h in (1, 2) for w in (1, 2)]
    config = LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": s["vision_hidden"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": max(2, s["vision_hidden"] // 64),
            "intermediate_size": 2 * s["vision_hidden"],
            "image_size": image_size,
            "patch_size": s["patch"],
            "vision_use_head": False,
        },
        text_config=_text_config(tokenizer, s, tie_word_embeddings=True),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = image_processor_class("LlavaOnevisionImageProcessor")(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    _save_base(model, tokenizer, image_processor, out)
    return model


def build_qwen2_5_vl_base(out: Path, size: str = "tiny", seed: int = 0):
    """A random Qwen2.5-VL model in its on-disk format: the ViT with window attention (14 px patches, 2x2 merger),
    a Qwen2 language model with M-RoPE (head_dim 64, mrope_section [8, 12, 12]: the 7B's [16, 24, 24] halved with
    its head), the tokenizer with Qwen's own vision tokens, and Qwen2-VL's image processor with `max_pixels` set so a
    face crop is 56 px ("tiny": a 4x4 patch grid, 2x2 = 4 visual tokens) or 224 px ("mid")."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mllm.model.bases import image_processor_class
    from mllm.parts import QWEN_VISION_TOKENS

    tokenizer = build_tokenizer(extra_special_tokens=QWEN_VISION_TOKENS)
    torch.manual_seed(seed)
    s = SIZES[size]
    side = 56 if size == "tiny" else 224
    text = _text_config(tokenizer, s)
    text.update(model_type="qwen2_5_vl_text", rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                 "mrope_section": [8, 12, 12]})  # fmt: skip
    config = Qwen2_5_VLConfig(
        vision_config={
            **_qwen_vision(s, patch=14),
            "window_size": 56,
            "fullatt_block_indexes": [s["vision_layers"] - 1],
            "tokens_per_second": 2,
        },
        text_config=text,
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    image_processor = image_processor_class("Qwen2VLImageProcessor")(
        min_pixels=28 * 28, max_pixels=side * side, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    _save_base(model, tokenizer, image_processor, out)
    return model


def build_qwen3_vl_base(out: Path, size: str = "tiny", seed: int = 0):
    """A random Qwen3-VL model in its on-disk format: the ViT over 16 px patches with learned position embeddings
    and deepstack mergers after each of its layers (2 levels "tiny"), a Qwen3 language model with interleaved M-RoPE
    (head_dim 64, mrope_section [12, 10, 10]: the 8B's [24, 20, 20] halved with its head), the tokenizer with Qwen's
    vision tokens, Qwen2-VL's image processor as Qwen3-VL ships it (16 px patches, mean and std 0.5) with
    `max_pixels` making a face crop 64 px ("tiny": a 4x4 patch grid, 2x2 = 4 visual tokens) or 224 px ("mid"), and
    Qwen3-VL's video processor (vLLM loads the processor whole)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from mllm.parts import QWEN_VISION_TOKENS

    tokenizer = build_tokenizer(extra_special_tokens=QWEN_VISION_TOKENS)
    torch.manual_seed(seed)
    s = SIZES[size]
    side = 64 if size == "tiny" else 224
    text = _text_config(tokenizer, s)
    text.update(model_type="qwen3_vl_text", rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                "mrope_section": [12, 10, 10], "mrope_interleaved": True})  # fmt: skip
    config = Qwen3VLConfig(
        vision_config={**_qwen3_vision(s), "deepstack_visual_indexes": list(range(min(2, s["vision_layers"])))},
        text_config=text,
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = Qwen3VLForConditionalGeneration(config)
    _save_qwen3_base(model, tokenizer, out, side)
    return model


def build_qwen3_5_base(out: Path, size: str = "tiny", seed: int = 0):
    """A random Qwen3.5 model in its on-disk format: the ViT as Qwen3-VL's without deepstack, a hybrid language model
    of Gated DeltaNet linear-attention layers and a full-attention layer (3 + 1 "tiny", as the real ones repeat 3 + 1)
    with interleaved M-RoPE on a quarter of each head (mrope_section [3, 3, 2]), the tokenizer with Qwen's vision
    tokens, and the processors as for Qwen3-VL (64 px face crops "tiny": 4 visual tokens)."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from mllm.parts import QWEN_VISION_TOKENS

    tokenizer = build_tokenizer(extra_special_tokens=QWEN_VISION_TOKENS)
    torch.manual_seed(seed)
    s = SIZES[size]
    side = 64 if size == "tiny" else 224
    text = _text_config(tokenizer, s)
    layers = 4 if size == "tiny" else s["lm_layers"] // 4 * 4
    text.update(
        model_type="qwen3_5_text", num_hidden_layers=layers,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
        linear_num_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                         "mrope_section": [3, 3, 2], "mrope_interleaved": True},
    )  # fmt: skip
    config = Qwen3_5Config(
        vision_config=_qwen3_vision(s),
        text_config=text,
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = Qwen3_5ForConditionalGeneration(config)
    _save_qwen3_base(model, tokenizer, out, side)
    return model


def _qwen_vision_token_ids(tokenizer) -> dict:
    """A Qwen-VL config's ids of its vision tokens, from the tokenizer."""
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }


def _qwen_vision(s: dict, patch: int) -> dict:
    """A Qwen-VL ViT at size `s`: `patch` px patches, a 2x2 merger to the language model's width."""
    return {
        "depth": s["vision_layers"],
        "hidden_size": s["vision_hidden"],
        "intermediate_size": 2 * s["vision_hidden"],
        "num_heads": max(2, s["vision_hidden"] // 32),
        "out_hidden_size": s["lm_hidden"],
        "patch_size": patch,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def _qwen3_vision(s: dict) -> dict:
    """The ViT of the Qwen3 family at size `s`: 16 px patches, learned position embeddings over an 8x8 grid."""
    return {**_qwen_vision(s, patch=16), "num_position_embeddings": 64}


def _save_qwen3_base(model, tokenizer, out: Path, side: int) -> None:
    """The Qwen3 family's files: Qwen2-VL's image processor as they ship it (16 px patches, mean and std 0.5) with
    `max_pixels` making a face crop `side` px, and Qwen3-VL's video processor (vLLM loads the processor whole)."""
    from mllm.model.bases import image_processor_class

    image_processor = image_processor_class("Qwen2VLImageProcessor")(
        min_pixels=32 * 32, max_pixels=side * side, patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    _save_base(model, tokenizer, image_processor, out)
    qwen3_video_processor().save_pretrained(out)


def qwen3_video_processor():
    """Qwen3-VL's video processor (torchvision's where it imports, which vLLM's Qwen3-VL module needs anyway)."""
    import transformers

    return transformers.Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)


# Base model type -> builder of its tiny random checkpoint (one per supported base).
TINY_BASES = {
    "internvl": build_internvl_base,
    "llava_onevision": build_llava_onevision_base,
    "qwen2_5_vl": build_qwen2_5_vl_base,
    "qwen3_vl": build_qwen3_vl_base,
    "qwen3_5": build_qwen3_5_base,
}


def build_audio(out: Path, size: str = "tiny", seed: int = 0):
    """A random Wav2Vec2 (the standard 7-layer 320x downsampling feature encoder) and its feature extractor."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    s = SIZES[size]
    config = Wav2Vec2Config(
        hidden_size=s["audio_hidden"],
        num_hidden_layers=s["audio_layers"],
        num_attention_heads=max(2, s["audio_hidden"] // 64),
        intermediate_size=2 * s["audio_hidden"],
        conv_dim=(s["audio_conv"],) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        vocab_size=32,
    )
    model = Wav2Vec2Model(config)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    return model


def make_tiny(out: str | Path, seed: int = 0, size: str = "tiny", base: str = "internvl") -> Path:
    """Build the tiny checkpoints under `out` (claimed first: new, empty or ours). Returns `out/emoreason`."""
    from mllm.outputs import atomic_dir, atomic_path, claim_output_dir

    if base not in TINY_BASES:
        from mllm.model import get_adapter

        get_adapter(base)  # a refused or unknown family: its reason
        raise ValueError(f"no tiny checkpoint for base {base!r}; available: {sorted(TINY_BASES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {sorted(SIZES)}")
    out = claim_output_dir(out, kind="make-tiny")  # before the slow imports: a refused folder fails at once

    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.processor import EmoReasonProcessor

    with atomic_dir(out / "base") as tmp:
        TINY_BASES[base](tmp, size=size, seed=seed)
    with atomic_dir(out / "audio") as tmp:
        build_audio(tmp, size=size, seed=seed)
    with atomic_dir(out / "emoreason") as tmp:
        model = EmoReasonForConditionalGeneration.from_base(out / "base", out / "audio", seed=seed)
        model.save_pretrained(tmp)
        EmoReasonProcessor.from_base(out / "base", out / "audio", model.config).save_pretrained(tmp)
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out / "sample.mp4") as tmp:
        shutil.copyfile(write_sample_clip(Path(scratch) / "sample.mp4"), tmp)  # the container follows the suffix
    return out / "emoreason"


def write_sample_clip(path: Path) -> Path:
    """A 2 s clip of a real face (the astronaut photograph) with speech from espeak-ng, or a tone without it."""

    from mllm.samples import synthetic

    audio = synthetic.speech_or_tone("I am not sure how I feel about this.", 2.0)
    return synthetic.write_video(path, synthetic.face_frames(50), fps=25, audio=audio)


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny (tests) or mid (benchmarks)")
    parser.add_argument(
        "--base", default="internvl", help=f"base MLLM family, by model_type: {', '.join(sorted(TINY_BASES))}"
    )


def run(args) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tiny files write and load at once: the bars would only be noise
    path = make_tiny(args.out, seed=args.seed, size=args.size, base=args.base)
    print(
        f"tiny {args.base} checkpoints in {args.out}: base/, audio/, emoreason/, sample.mp4 "
        f"(from_pretrained('{path}'))"
    )
    return 0
