"""`emoreason make-tiny OUT`: tiny random checkpoints built offline, in the on-disk formats of the real ones.

    OUT/base/       an InternVL-hf image-text-to-text model (vision tower, projector, Qwen2 language model with
                    head_dim 64 as vLLM's CPU attention needs), its tokenizer with a chat template and the EmoReason
                    placeholder tokens, and its image processor config
    OUT/audio/      a Wav2Vec2 model and its feature extractor config
    OUT/emoreason/  the composed EmoReason model (`from_pretrained` loads it), with its processor
    OUT/sample.mp4  a 2 s clip of a real face with speech, to try the commands on

Tests and the README's offline example use it; real runs point the same code at hub ids or local paths.
"""

from __future__ import annotations

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


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a few sentences, with the chat template and placeholder tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mllm.config import AUDIO_PLACEHOLDERS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(AUDIO_PLACEHOLDERS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[3:] + list(AUDIO_PLACEHOLDERS),
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


def build_base(out: Path, tokenizer, size: str = "tiny", seed: int = 0):
    """A random InternVL-hf model. "tiny": 64x64 images, 16 px patches, pixel shuffle 0.5 -> 4 visual tokens."""
    import torch
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration

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
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": s["lm_hidden"],
            "intermediate_size": s["lm_ffn"],
            "num_hidden_layers": s["lm_layers"],
            "num_attention_heads": s["lm_heads"],  # head_dim 64: vLLM's CPU attention supports it
            "num_key_value_heads": 1,
            "head_dim": 64,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
            # Wider than the usual 0.02: with a frozen random head of that scale the largest reachable logit is
            # about 2.5, so even a perfect LoRA could not bring the loss below ~3.7 on a 512-token vocabulary.
            "initializer_range": 0.1,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(image_size // s["patch"]) ** 2 // 4,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GotOcr2ImageProcessor(
        size={"height": image_size, "width": image_size}, crop_to_patches=False, do_convert_rgb=True
    ).save_pretrained(out)
    return model


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


def make_tiny(out: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.processor import EmoReasonProcessor

    out = Path(out)
    tokenizer = build_tokenizer()
    build_base(out / "base", tokenizer, size=size, seed=seed)
    build_audio(out / "audio", size=size, seed=seed)
    model = EmoReasonForConditionalGeneration.from_base(out / "base", out / "audio", seed=seed)
    model.save_pretrained(out / "emoreason")
    EmoReasonProcessor.from_base(out / "base", out / "audio", model.config).save_pretrained(out / "emoreason")
    write_sample_clip(out / "sample.mp4")
    return out / "emoreason"


def write_sample_clip(path: Path) -> Path:
    """A 2 s clip of a real face (the astronaut photograph) with speech from espeak-ng, or a tone without it."""

    from mllm import synthetic

    audio = synthetic.speech_or_tone("I am not sure how I feel about this.", 2.0)
    return synthetic.write_video(path, synthetic.face_frames(50), fps=25, audio=audio)


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny (tests) or mid (benchmarks)")


def run(args) -> int:
    path = make_tiny(args.out, seed=args.seed, size=args.size)
    print(f"tiny checkpoints in {args.out}: base/, audio/, emoreason/, sample.mp4 (from_pretrained('{path}'))")
    return 0
