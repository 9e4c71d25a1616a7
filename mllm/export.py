"""Export for serving: the base's language model as a standalone causal-LM checkpoint that vLLM loads, and a PEFT
LoRA adapter trained on the composed model renamed to that checkpoint's modules.

    emoreason export tiny/emoreason --out served/ [--adapter runs/sft/adapter]

    served/language_model/   config.json, model.safetensors, tokenizer: vLLM's `LLM(model=...)` loads this
    served/lora/             adapter_config.json + adapter_model.safetensors in the exported LM's names (if given)

The composed model keeps computing the embeddings (`build_inputs_embeds`); vLLM runs only the language model,
fed `prompt_embeds` (ARCHITECTURE.md, decision 2).
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "Export the language model (and a LoRA adapter) of an EmoReason checkpoint for vLLM."

# PEFT prefixes a wrapped model's module names with this.
PEFT_PREFIX = "base_model.model."


def language_model_lora_config(model, r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """A PEFT `LoraConfig` on the language model only (vLLM's LoRA loader takes nothing else)."""
    from peft import LoraConfig

    adapter = model.adapter
    names = "|".join(adapter.lora_target_modules)
    prefix = "base." + adapter.language_model_prefix.replace(".", r"\.")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=rf"{prefix}layers\.\d+\.(self_attn|mlp)\.({names})",
        bias="none",
    )


def export_language_model(model, tokenizer, out: str | Path) -> Path:
    """Write the decoder + LM head of `model.base` as a `*ForCausalLM` checkpoint with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    adapter = model.adapter
    text_config = adapter.text_config(model.base).__class__.from_dict(adapter.text_config(model.base).to_dict())
    text_config.tie_word_embeddings = False  # the head is written out explicitly
    text_config.vocab_size = model.get_input_embeddings().num_embeddings
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    state = {k: v.detach().clone() for k, v in adapter.language_model_state_dict(model.base).items()}
    missing, unexpected = lm.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"language model export does not line up: missing {missing}, unexpected {unexpected}")
    lm.config.architectures = [lm.__class__.__name__]
    lm.generation_config.eos_token_id = model.config.eos_token_id
    lm.generation_config.pad_token_id = model.config.pad_token_id
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def convert_lora_adapter(adapter_dir: str | Path, out: str | Path, model, language_model_dir: str | Path) -> Path:
    """Rename a PEFT LoRA adapter saved from the composed model to the exported causal LM's module names."""
    from safetensors.torch import load_file, save_file

    adapter_dir, out = Path(adapter_dir), Path(out)
    composed = PEFT_PREFIX + "base." + model.adapter.language_model_prefix
    exported = PEFT_PREFIX + model.adapter.exported_prefix
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    renamed = {}
    for key, value in weights.items():
        if not key.startswith(composed):
            raise ValueError(
                f"{adapter_dir}: adapter weight {key!r} is outside the language model; vLLM serves LoRA on the "
                "language model only (train new modules in full and save them beside the adapter)"
            )
        renamed[exported + key[len(composed) :]] = value.contiguous()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("modules_to_save"):
        raise ValueError(f"{adapter_dir}: modules_to_save {config['modules_to_save']} cannot be served by vLLM")
    config["target_modules"] = sorted({k.split(".")[-3] for k in renamed if ".lora_A." in k})
    config["base_model_name_or_path"] = str(Path(language_model_dir).resolve())
    out.mkdir(parents=True, exist_ok=True)
    save_file(renamed, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out


def export_for_serving(model_dir: str | Path, out: str | Path, adapter_dir: str | Path | None = None) -> dict:
    from mllm.model import EmoReasonForConditionalGeneration
    from mllm.processor import EmoReasonProcessor

    model = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir))
    processor = EmoReasonProcessor.from_pretrained(model_dir)
    out = Path(out)
    paths = {"language_model": export_language_model(model, processor.tokenizer, out / "language_model")}
    if adapter_dir is not None:
        paths["lora"] = convert_lora_adapter(adapter_dir, out / "lora", model, paths["language_model"])
    return paths


def add_arguments(parser) -> None:
    parser.add_argument("model", help="EmoReason checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter trained on the composed model")


def run(args) -> int:
    paths = export_for_serving(args.model, args.out, args.adapter)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
