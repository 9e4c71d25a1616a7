"""Export for serving: the base's language model as a standalone causal-LM checkpoint that vLLM loads, and a PEFT
LoRA adapter trained on the composed model renamed to that checkpoint's modules.

    emoreason export tiny/emoreason --out served/ [--adapter runs/sft/adapter]

    served/language_model/   config.json, model.safetensors, tokenizer: vLLM's `LLM(model=...)` loads this
    served/lora/             adapter_config.json + adapter_model.safetensors in the exported LM's names (if given)

Exports are keyed by content: a sha256 of the checkpoint's weight, config and tokenizer files (and the adapter's),
never by modification times, which `cp -p` and `rsync -a` carry over. Each export folder is written under a
temporary name and renamed into place, with a completion marker (`EXPORT_MARKER`: the key and every file's size)
written last; on reuse the marker is checked against the key and the files, and a stale or damaged export is
rebuilt. `--out` follows the output rules (`mllm.outputs.claim_output_dir`): a new or empty folder, or one this
tool wrote, and never the model or adapter folder or a folder inside either.

The composed model keeps computing the embeddings (`build_inputs_embeds`); vLLM runs only the language model,
fed `prompt_embeds` (ARCHITECTURE.md, decision 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mllm.checkpoints import check_checkpoint, check_safetensors, read_json, resolve_checkpoint

HELP = "Export the language model (and a LoRA adapter) of an EmoReason checkpoint for vLLM."

# PEFT prefixes a wrapped model's module names with this.
PEFT_PREFIX = "base_model.model."
EXPORT_FORMAT = 1  # bump when export_language_model / convert_lora_adapter write something different
EXPORT_MARKER = ".emoreason-export.json"
# The files of a checkpoint or adapter folder that an export depends on (top level, not hidden).
KEYED_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt", ".tiktoken")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A trained model folder holds its LoRA adapter here.
ADAPTER = "adapter"


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
    """Write the decoder + LM head of `model.base` as a `*ForCausalLM` checkpoint with the tokenizer; for a base
    with M-RoPE (the Qwen-VL family), the base's own checkpoint instead (`export_multimodal_base`)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    adapter = model.adapter
    if adapter.serving_refused:
        raise ValueError(
            f"base model type {adapter.model_type!r} cannot be exported for serving: {adapter.serving_refused}"
        )
    if adapter.positions == "mrope":
        return export_multimodal_base(model, tokenizer, out)
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


def export_multimodal_base(model, tokenizer, out: str | Path) -> Path:
    """Write `model.base` in its own checkpoint layout (e.g. `Qwen2_5_VLForConditionalGeneration`), with the
    tokenizer and an image processor of the base's patch geometry, for vLLM to load as that model. vLLM is then fed
    our embeddings as image items with their grids (`enable_mm_embeds`) and computes the base's M-RoPE positions
    from the grids; the vision tower it loads is never run on a request (our encoders run here)."""
    from mllm.model.bases import image_processor_class

    out = Path(out)
    model.base.config.architectures = [model.base.__class__.__name__]
    model.base.generation_config.eos_token_id = model.config.eos_token_id
    model.base.generation_config.pad_token_id = model.config.pad_token_id
    model.base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    vision = model.base.config.vision_config
    image_processor_class("Qwen2VLImageProcessor")(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
    ).save_pretrained(out)
    return out


def check_adapter(adapter_dir: str | Path) -> Path:
    """A PEFT adapter folder with both files present and readable, or one line naming what is wrong."""
    adapter_dir = resolve_checkpoint(adapter_dir, what="adapter folder", download=False)
    if isinstance(adapter_dir, str):  # an org/name that is not on disk
        raise FileNotFoundError(f"{adapter_dir}: adapter folder not found (adapters are read from local folders)")
    read_json(adapter_dir / "adapter_config.json")
    check_safetensors(adapter_dir / "adapter_model.safetensors")
    return adapter_dir


def convert_lora_adapter(adapter_dir: str | Path, out: str | Path, model, language_model_dir: str | Path) -> Path:
    """Rename a PEFT LoRA adapter saved from the composed model to the exported causal LM's module names.
    `model`: the composed model, or just its base adapter (`model.adapter`), which names the modules."""
    from safetensors.torch import load_file, save_file

    adapter_dir, out = check_adapter(adapter_dir), Path(out)
    base_adapter = getattr(model, "adapter", model)
    composed = PEFT_PREFIX + "base." + base_adapter.language_model_prefix
    exported = PEFT_PREFIX + base_adapter.exported_prefix
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


# ---------------------------------------------------------------------------------------------------------------
# Exports keyed by content, written atomically, verified on reuse


def content_key(*folders: str | Path, salt: str = "") -> str:
    """sha256 over the names, sizes and bytes of each folder's weight/config/tokenizer files (`KEYED_SUFFIXES`, top
    level, not hidden), the export format and `salt`. Copies of a folder share a key; any changed byte changes it."""
    digest = hashlib.sha256(f"emoreason-export {EXPORT_FORMAT}\n{salt}\n".encode())
    for folder in folders:
        files = sorted(
            p
            for p in Path(folder).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(KEYED_SUFFIXES)
        )
        digest.update(f"folder {len(files)}\n".encode())
        for path in files:
            digest.update(f"{path.name} {path.stat().st_size}\n".encode())
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()


def export_is_current(folder: str | Path, key: str) -> bool:
    """`folder` holds a complete export for `key`: its marker names the key, and every file it lists is there
    with the size it had when the export finished."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text())
        files = marker["files"]
        if marker.get("key") != key or not files:
            return False
        return all(
            (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _mark_complete(folder: Path, key: str) -> None:
    from mllm.outputs import atomic_write_text

    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != EXPORT_MARKER}
    atomic_write_text(folder / EXPORT_MARKER, json.dumps({"key": key, "format": EXPORT_FORMAT, "files": files}))


def write_export(final: str | Path, key: str, write) -> bool:
    """Make `final` a complete export for `key`: kept if it already is one, else written by `write(tmp_folder)`
    beside it, marked complete and renamed into place (a killed run leaves the previous state, never half a
    folder). Returns whether it was (re)written."""
    from mllm.outputs import atomic_dir

    final = Path(final)
    if export_is_current(final, key):
        return False
    with atomic_dir(final) as tmp:
        write(tmp)
        _mark_complete(tmp, key)
    return True


def _remove_owned(folder: Path) -> None:
    """Remove a folder this tool wrote: renamed aside first, so a kill midway leaves litter, not half a folder."""
    from mllm.outputs import TMP_TAG

    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}{TMP_TAG}{os.getpid()}-old-", dir=folder.parent))
    os.replace(folder, aside / "gone")
    shutil.rmtree(aside, ignore_errors=True)


def served_folder(model_dir: str | Path, key: str) -> Path:
    """Where `predict` keeps a checkpoint's export: `MODEL/served/` when the model folder is writable, else (a
    read-only folder, the hub cache) `$EMOREASON_CACHE/served/KEY/` (default `~/.cache/emoreason`)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from mllm.outputs import clean_litter

    model_dir = Path(model_dir)
    in_hub_cache = Path(HF_HUB_CACHE).resolve() in model_dir.resolve().parents
    if os.access(model_dir, os.W_OK | os.X_OK) and not in_hub_cache:
        served = model_dir / "served"
    else:
        cache = os.environ.get("EMOREASON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "emoreason")
        served = Path(cache) / "served" / key[:32]
    served.mkdir(parents=True, exist_ok=True)
    clean_litter(served)
    return served


def served_language_model(model_dir: str | Path, load) -> Path:
    """The exported causal LM for the checkpoint in `model_dir`, exported once per content and reused while the
    checkpoint's files are unchanged. `load()` returns (model, tokenizer); it is called only when exporting."""
    key = content_key(model_dir)
    final = served_folder(model_dir, key) / "language_model"
    write_export(final, key, lambda tmp: export_language_model(*load(), tmp))
    return final


def served_lora(model_dir: str | Path, lm_dir: str | Path) -> Path | None:
    """The checkpoint's own LoRA adapter (`MODEL/adapter/`, as training writes it) converted for vLLM next to the
    exported language model, keyed by content like it; None when the checkpoint has no adapter."""
    model_dir, lm_dir = Path(model_dir), Path(lm_dir)
    adapter_dir = model_dir / ADAPTER
    if not (adapter_dir / "adapter_config.json").exists():
        return None
    from mllm.model.bases import get_adapter

    check_adapter(adapter_dir)
    base_type = read_json(model_dir / "config.json").get("base_config", {}).get("model_type")
    key = content_key(adapter_dir, salt=f"{content_key(model_dir)} {lm_dir.resolve()}")
    final = lm_dir.parent / "lora"
    write_export(final, key, lambda tmp: convert_lora_adapter(adapter_dir, tmp, get_adapter(base_type), lm_dir))
    return final


def served_model(model_dir: str | Path, load) -> tuple[Path, Path | None]:
    """The checkpoint's export for vLLM: (language model, its LoRA adapter or None), each kept while its content
    is unchanged. `load()` returns (model without the adapter applied, tokenizer); called only when exporting."""
    lm_dir = served_language_model(model_dir, load)
    return lm_dir, served_lora(model_dir, lm_dir)


def load_model(model_dir: str | Path, dtype=None, adapter: str = "merge"):
    """An EmoReason checkpoint with its own LoRA adapter (`MODEL/adapter/`, written by training) applied:
    `adapter="merge"` folds it into the language model (inference, and the start of a next training stage),
    `"keep"` returns the PEFT-wrapped model, `"ignore"` leaves it off."""
    from mllm.model import EmoReasonForConditionalGeneration

    model_dir = resolve_checkpoint(model_dir)
    model = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype)
    adapter_dir = Path(model_dir) / ADAPTER if not isinstance(model_dir, str) else None
    if adapter == "ignore" or adapter_dir is None or not (adapter_dir / "adapter_config.json").exists():
        return model
    from peft import PeftModel

    check_adapter(adapter_dir)
    wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
    return wrapped.merge_and_unload() if adapter == "merge" else wrapped


def check_servable(model_dir: str | Path) -> None:
    """Refuse, in one line and before anything is loaded or written, a checkpoint whose base is not served."""
    from mllm.model.bases import get_adapter

    base_type = read_json(Path(model_dir) / "config.json").get("base_config", {}).get("model_type")
    adapter = get_adapter(base_type)
    if adapter.serving_refused:
        raise ValueError(f"base model type {base_type!r} cannot be served: {adapter.serving_refused}")


def export_for_serving(model_dir: str | Path, out: str | Path, adapter_dir: str | Path | None = None) -> dict:
    """Write OUT/language_model (and OUT/lora with an adapter). Parts whose content key matches are kept; a `lora`
    from an earlier export with an adapter is removed when none is given now. Returns {part: (path, written)}."""
    from mllm.outputs import claim_output_dir

    model_dir = resolve_checkpoint(model_dir)
    check_checkpoint(model_dir, processor=True)
    check_servable(model_dir)
    adapter_dir = check_adapter(adapter_dir) if adapter_dir is not None else None
    out = claim_output_dir(out, protect=[p for p in (model_dir, adapter_dir) if p is not None], kind="export")
    loaded = {}

    def load():
        if not loaded:
            from mllm.model import EmoReasonForConditionalGeneration
            from mllm.processor import EmoReasonProcessor

            loaded["model"] = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir))
            loaded["tokenizer"] = EmoReasonProcessor.from_pretrained(model_dir).tokenizer
        return loaded["model"], loaded["tokenizer"]

    lm_key = content_key(model_dir)
    lm_dir = out / "language_model"
    result = {
        "language_model": (lm_dir, write_export(lm_dir, lm_key, lambda tmp: export_language_model(*load(), tmp)))
    }
    lora_dir = out / "lora"
    if adapter_dir is not None:
        from mllm.model.bases import get_adapter

        base_type = read_json(model_dir / "config.json").get("base_config", {}).get("model_type")
        lora_key = content_key(adapter_dir, salt=f"{lm_key} {lm_dir.resolve()}")
        written = write_export(
            lora_dir, lora_key, lambda tmp: convert_lora_adapter(adapter_dir, tmp, get_adapter(base_type), lm_dir)
        )
        result["lora"] = (lora_dir, written)
    elif lora_dir.exists():
        _remove_owned(lora_dir)  # it belonged to an adapter not given now: serving it would be stale
    return result


def add_arguments(parser) -> None:
    parser.add_argument("model", help="EmoReason checkpoint folder (or an org/name hub id)")
    parser.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export")
    parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter trained on the composed model")


def run(args) -> int:
    for name, (path, written) in export_for_serving(args.model, args.out, args.adapter).items():
        print(f"{name}: {path} ({'written' if written else 'up to date, kept'})")
    return 0
