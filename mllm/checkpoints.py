"""Checkpoint folders, found at once and checked before anything heavy is loaded: a local folder (a training run's
folder stands for its final model) or an `org/name` hub id, then config, weights and tokenizer files each parsed or
size-checked, every failure one line naming the file. This module imports neither torch nor transformers, so that
a bad path fails before those (slow) imports; the model, the processor, export, training and serving all use it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

# A training run's folder holds its final model here.
TRAINED_MODEL = "model"

# A hub id is `org/name` only; anything else that is not on disk is a local path that is missing.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROCESSOR_FILES = ("emoreason_processor.json", "preprocessor_config.json", "tokenizer_config.json")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    import huggingface_hub

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags) or huggingface_hub.is_offline_mode()


def looks_like_hub_id(name: str) -> bool:
    """`org/name`, not on disk, and no part of it on disk (`runs/model` with a local `runs/` is a local path)."""
    if not _HUB_ID.match(name) or name.startswith(".") or os.sep != "/" and os.sep in name:
        return False
    return not Path(name).exists() and not Path(name.split("/")[0]).exists()


def _missing_folder(name: str, what: str) -> FileNotFoundError:
    path = Path(os.path.abspath(os.path.expanduser(name)))
    closest = next((p for p in path.parents if p.exists()), None)
    hint = f"; the closest existing folder is {closest}" if closest is not None and str(closest) != "/" else ""
    return FileNotFoundError(f"{name}: {what} not found (no such folder{hint})")


def resolve_checkpoint(
    name_or_path, what: str = "model folder", download: bool = True, revision=None, subfolder: str = ""
) -> Path | str:
    """A local folder, checked at once, or for an `org/name` id that is not on disk: the hub snapshot's folder
    (`download`; from the cache only when HF_HUB_OFFLINE is set) or the id itself (`download=False`, for
    transformers to fetch). A path that looks local and is missing fails here, never after hub retries."""
    name = os.fspath(name_or_path)
    if not looks_like_hub_id(name):
        path = Path(os.path.expanduser(name)) / subfolder
        if not path.exists():
            raise _missing_folder(str(Path(name) / subfolder) if subfolder else name, what)
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: is a file, not a {what}")
        if not (path / "config.json").exists() and (path / TRAINED_MODEL / "config.json").exists():
            return path / TRAINED_MODEL  # a training run's folder: its final model
        return path
    if not download:
        return name
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=offline))
    except Exception as exc:
        if offline:
            raise FileNotFoundError(
                f"{name}: not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set, so the hub "
                "was not asked)"
            ) from exc
        raise OSError(f"{name}: not a local folder, and the Hugging Face hub could not provide it: {exc}") from exc
    return folder / subfolder if subfolder else folder


def read_json(path: Path) -> dict:
    """A JSON file's content, or one line naming the file and what is wrong with it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {exc}") from exc


def check_safetensors(path: Path) -> None:
    """The header parses and the data it describes fits the file exactly (a truncated copy does not)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ValueError(f"{path}: not a safetensors file, or truncated ({size} bytes)")
        try:
            header = json.loads(fh.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{path}: corrupt safetensors header ({exc})") from exc
    if 8 + length + end != size:
        raise ValueError(
            f"{path}: truncated or corrupt: its header describes {8 + length + end} bytes, the file has {size}"
        )


def check_checkpoint(folder: Path, processor: bool = False) -> None:
    """Before loading: config.json parses and is an EmoReason config, the weights are present and whole, and (with
    `processor`) the tokenizer and processor files are there. Each failure is one line naming the file."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    if config.get("model_type") != "emoreason":
        raise ValueError(
            f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not an EmoReason checkpoint "
            "(compose one with EmoReasonForConditionalGeneration.from_base, or emoreason make-tiny)"
        )
    index = folder / "model.safetensors.index.json"
    if index.exists():
        for shard in sorted(set(read_json(index).get("weight_map", {}).values())):
            check_safetensors(folder / shard)
    elif not (folder / "pytorch_model.bin").is_file():
        check_safetensors(folder / "model.safetensors")
    for name in ("generation_config.json", "special_tokens_map.json", "tokenizer.json", "chat_template.json"):
        if (folder / name).exists():
            read_json(folder / name)
    if processor:
        for name in PROCESSOR_FILES:
            read_json(folder / name)
        if not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILES):
            raise FileNotFoundError(f"{folder / 'tokenizer.json'}: missing (the tokenizer's vocabulary)")
