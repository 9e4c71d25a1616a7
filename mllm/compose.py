"""`emoreason compose`: a new EmoReason model from a base MLLM and a Wav2Vec2 encoder, saved for training.

    emoreason compose --base OpenGVLab/InternVL3-1B-hf --audio facebook/wav2vec2-base --out models/internvl3-1b
    emoreason compose --base llava-hf/llava-onevision-qwen2-0.5b-ov-hf --audio facebook/wav2vec2-base \\
        --out models/llava-ov-0.5b --label-space basic7

    OUT/model/   config.json + model.safetensors (base, encoder and the fresh new modules in one checkpoint) and the
                 processor files. `--model OUT` (recipes, `emoreason analyze`) and
                 `EmoReasonForConditionalGeneration.from_pretrained("OUT")` find it there, as in a training run's
                 folder; `EmoReasonProcessor.from_pretrained("OUT/model")` loads the processor

`--base` / `--audio` are hub ids (downloaded by transformers, or read from the cache with HF_HUB_OFFLINE=1) or local
folders; a local path that is missing fails at once, in one line, before torch is imported. The face attention and
the audio projector start fresh (seeded by `--seed`); every pretrained weight is kept. OUT follows the output rules
(`mllm.outputs.claim_output_dir`): new, empty, or written by emoreason before, never one of the inputs; the model is
written under a temporary name and renamed into place, so a killed run leaves no half-written checkpoint.
"""

from __future__ import annotations

from pathlib import Path

HELP = "Compose an EmoReason model from a base MLLM and a Wav2Vec2 encoder (hub ids or folders) and save it."

DTYPES = ("bfloat16", "float32")
MODEL_FOLDER = "model"  # as in a training run's folder: resolve_checkpoint(OUT) finds OUT/model


def compose(
    base: str | Path,
    audio: str | Path,
    out: str | Path,
    dtype: str = "bfloat16",
    seed: int = 0,
    label_space: str = "abaw_expr",
) -> Path:
    """Compose, then save model and processor into OUT/model. Returns that folder."""
    from mllm.checkpoints import resolve_checkpoint
    from mllm.labels import LABEL_SPACES
    from mllm.outputs import atomic_dir, claim_output_dir

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if label_space not in LABEL_SPACES:
        raise ValueError(f"unknown label space {label_space!r}; valid: {sorted(LABEL_SPACES)}")
    # Local folders are checked here (one line if missing); hub ids stay ids for transformers to fetch.
    base = resolve_checkpoint(base, what="base model", download=False)
    audio = resolve_checkpoint(audio, what="audio encoder", download=False)
    out = claim_output_dir(out, protect=[p for p in (base, audio) if isinstance(p, Path)], kind="compose")

    import torch

    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.processor import EmoReasonProcessor

    model = EmoReasonForConditionalGeneration.from_base(
        base, audio, dtype=getattr(torch, dtype), seed=seed, label_space=label_space
    )
    processor = EmoReasonProcessor.from_base(base, audio, model.config)
    with atomic_dir(out / MODEL_FOLDER) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out / MODEL_FOLDER


def add_arguments(parser) -> None:
    parser.add_argument("--base", required=True, help="base MLLM: hub id or folder (InternVL-hf, LLaVA-OneVision-hf)")
    parser.add_argument("--audio", required=True, help="Wav2Vec2 audio encoder: hub id or folder")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an earlier compose output)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the saved weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new modules' initialisation")
    parser.add_argument(
        "--label-space", default="abaw_expr", help="expression labels the model answers with (mllm.labels)"
    )


def run(args) -> int:
    folder = compose(args.base, args.audio, args.out, args.dtype, args.seed, args.label_space)
    print(f"composed {args.base} + {args.audio} ({args.dtype}) in {folder}; train with --model {args.out}")
    return 0
