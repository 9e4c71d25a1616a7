"""Bad model folders, hub ids, output folders and stale or damaged exports, for `analyze`, `export`, `make-tiny` and
`from_pretrained`. Each case: the exit code (or exception), one line naming the file, no traceback, and the user's
files unchanged. No case starts a vLLM engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import assert_refused, checksums

FAST_S = 5.0  # "at once": no hub retries, no model loading


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A private copy of the tiny EmoReason checkpoint, free to damage (without the export a server may have written
    into the shared one)."""
    return Path(shutil.copytree(tiny_dir / "emoreason", tmp_path / "model", ignore=shutil.ignore_patterns("served")))


@pytest.fixture
def media(tiny_dir, tmp_path):
    return Path(shutil.copy(tiny_dir / "sample.mp4", tmp_path / "clip.mp4"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------------------------------------------------------
# Bad model folders, for both `analyze` and `export`. Each case damages a copy (or names a path) and returns the
# model argument and what the error line must name.


def _missing_absolute(model, tmp_path, monkeypatch):
    return str(tmp_path / "no-such-run" / "checkpoint"), ["no-such-run/checkpoint", "not found"]


def _missing_dot_relative(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return "./no-such-model", ["./no-such-model", "not found"]


def _missing_nested_relative(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return "runs/sft/final", ["runs/sft/final", "not found"]


def _missing_home(model, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return "~/models/emoreason", ["~/models/emoreason", "not found"]


def _partly_existing_org_name(model, tmp_path, monkeypatch):
    """`runs/typo` looks like an org/name id, but `runs/` is here: a local path, never a hub lookup."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return "runs/typo", ["runs/typo", "not found"]


def _hub_id_offline(model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "no-such-org-4e1a/no-such-model", ["no-such-org-4e1a/no-such-model", "HF_HUB_OFFLINE"]


def _a_file(model, tmp_path, monkeypatch):
    return str(model / "config.json"), ["config.json", "is a file"]


def _truncated_safetensors(model, tmp_path, monkeypatch):
    _truncate(model / "model.safetensors")
    return str(model), ["model.safetensors", "truncated"]


def _garbage_safetensors(model, tmp_path, monkeypatch):
    (model / "model.safetensors").write_bytes(b"\xff" * 4096)
    return str(model), ["model.safetensors"]


def _missing_safetensors(model, tmp_path, monkeypatch):
    (model / "model.safetensors").unlink()
    return str(model), ["model.safetensors", "missing"]


def _missing_tokenizer(model, tmp_path, monkeypatch):
    (model / "tokenizer.json").unlink()
    return str(model), ["tokenizer.json", "missing"]


def _truncated_tokenizer(model, tmp_path, monkeypatch):
    _truncate(model / "tokenizer.json")
    return str(model), ["tokenizer.json", "not valid JSON"]


def _missing_processor_settings(model, tmp_path, monkeypatch):
    (model / "emoreason_processor.json").unlink()
    return str(model), ["emoreason_processor.json", "missing"]


def _missing_feature_extractor(model, tmp_path, monkeypatch):
    (model / "preprocessor_config.json").unlink()
    return str(model), ["preprocessor_config.json", "missing"]


def _truncated_config(model, tmp_path, monkeypatch):
    _truncate(model / "config.json", 0.3)
    return str(model), ["config.json", "not valid JSON"]


def _missing_config(model, tmp_path, monkeypatch):
    (model / "config.json").unlink()
    return str(model), ["config.json", "missing"]


def _not_an_emoreason_checkpoint(model, tmp_path, monkeypatch):
    """The base MLLM's folder given where the composed checkpoint belongs."""
    base = Path(shutil.copytree(model, tmp_path / "base"))
    config = json.loads((base / "config.json").read_text())["base_config"]
    (base / "config.json").write_text(json.dumps(config))
    return str(base), ["config.json", "model_type 'internvl'", "not an EmoReason checkpoint"]


BAD_MODELS = {
    "missing-absolute": _missing_absolute,
    "missing-dot-relative": _missing_dot_relative,
    "missing-nested-relative": _missing_nested_relative,
    "missing-home": _missing_home,
    "partly-existing-org-name": _partly_existing_org_name,
    "hub-id-offline": _hub_id_offline,
    "a-file": _a_file,
    "truncated-safetensors": _truncated_safetensors,
    "garbage-safetensors": _garbage_safetensors,
    "missing-safetensors": _missing_safetensors,
    "missing-tokenizer": _missing_tokenizer,
    "truncated-tokenizer": _truncated_tokenizer,
    "missing-processor-settings": _missing_processor_settings,
    "missing-feature-extractor": _missing_feature_extractor,
    "truncated-config": _truncated_config,
    "missing-config": _missing_config,
    "not-an-emoreason-checkpoint": _not_an_emoreason_checkpoint,
}


@pytest.mark.parametrize("command", ["analyze", "export"])
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_folder_fails_at_once_naming_the_file(case, command, cli, model_copy, media, tmp_path, monkeypatch):
    model_arg, names = BAD_MODELS[case](model_copy, tmp_path, monkeypatch)
    before = checksums(tmp_path)
    out = tmp_path / "exported"
    args = ["analyze", "--model", model_arg, media] if command == "analyze" else ["export", model_arg, "--out", out]
    started = time.perf_counter()
    result = cli(*args)
    elapsed = time.perf_counter() - started
    assert_refused(result, *names, code=1)
    assert elapsed < FAST_S, f"{elapsed:.1f} s"
    assert result.out == ""
    assert checksums(tmp_path) == before  # nothing written, nothing changed (no served/, no --out)


def test_missing_model_folder_fails_at_once_from_a_fresh_process(tmp_path, tiny_dir):
    """The console script as users run it, hub reachable in principle: no hub retries, no heavy imports first."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    cli = str(Path(sys.executable).parent / "emoreason")
    started = time.perf_counter()
    out = subprocess.run(
        [cli, "analyze", "--model", str(tmp_path / "runs" / "missing"), str(tiny_dir / "sample.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.perf_counter() - started
    assert out.returncode == 1 and out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "runs/missing: model folder not found" in out.stderr
    assert elapsed < 15, f"{elapsed:.1f} s"  # about 1.5 s here; before, ~55 s of hub retries then a traceback


# ---------------------------------------------------------------------------------------------------------------
# from_pretrained / from_base


@pytest.mark.parametrize(
    ("case", "error", "names"),
    [
        ("missing", FileNotFoundError, ["no-such-checkpoint", "not found"]),
        ("hub-id-offline", FileNotFoundError, ["no-such-org-4e1a/model", "HF_HUB_OFFLINE"]),
        ("truncated-safetensors", ValueError, ["model.safetensors", "truncated"]),
        ("truncated-config", ValueError, ["config.json", "not valid JSON"]),
        ("base-not-composed", ValueError, ["config.json", "not an EmoReason checkpoint"]),
    ],
)
def test_from_pretrained_names_the_problem(case, error, names, model_copy, tmp_path, monkeypatch):
    from mllm.model import EmoReasonForConditionalGeneration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arg = {"missing": str(tmp_path / "no-such-checkpoint"), "hub-id-offline": "no-such-org-4e1a/model"}.get(
        case, str(model_copy)
    )
    if case == "truncated-safetensors":
        _truncate(model_copy / "model.safetensors")
    elif case == "truncated-config":
        _truncate(model_copy / "config.json", 0.3)
    elif case == "base-not-composed":
        config = json.loads((model_copy / "config.json").read_text())["base_config"]
        (model_copy / "config.json").write_text(json.dumps(config))
    before = checksums(tmp_path)
    started = time.perf_counter()
    with pytest.raises(error) as caught:
        EmoReasonForConditionalGeneration.from_pretrained(arg)
    assert time.perf_counter() - started < FAST_S
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert checksums(tmp_path) == before


def test_from_base_with_a_missing_local_base_fails_at_once(tiny_dir, tmp_path):
    from mllm.model import EmoReasonForConditionalGeneration

    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="base model not found"):
        EmoReasonForConditionalGeneration.from_base(tmp_path / "bases" / "internvl", tiny_dir / "audio")
    with pytest.raises(FileNotFoundError, match="audio encoder not found"):
        EmoReasonForConditionalGeneration.from_base(tiny_dir / "base", "./no-such-wav2vec2")
    assert time.perf_counter() - started < FAST_S


# ---------------------------------------------------------------------------------------------------------------
# export --out and --adapter


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory):
    """A PEFT LoRA adapter saved from the composed tiny model."""
    import torch
    from peft import get_peft_model

    from mllm.export import language_model_lora_config
    from mllm.model import EmoReasonForConditionalGeneration

    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_dir / "emoreason"))
    torch.manual_seed(0)
    peft_model = get_peft_model(model, language_model_lora_config(model, r=4))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(out)
    return out


def _out_is_the_model(model, tmp_path):
    return model, [str(model), "inside the input folder"]


def _out_inside_the_model(model, tmp_path):
    return model / "served", ["served", "inside the input folder"]


def _out_contains_the_model(model, tmp_path):
    return tmp_path, [str(tmp_path), "contains the input"]


def _out_a_user_folder(model, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("\\chapter{Introduction}\n")
    return folder, ["thesis", "folder of other files"]


def _out_a_file(model, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("do not overwrite\n")
    return path, ["notes.txt", "not a folder"]


BAD_OUTS = {
    "model-folder-itself": _out_is_the_model,
    "inside-the-model-folder": _out_inside_the_model,
    "contains-the-model-folder": _out_contains_the_model,
    "user-folder": _out_a_user_folder,
    "existing-file": _out_a_file,
}


@pytest.mark.parametrize("case", sorted(BAD_OUTS))
def test_export_refuses_an_output_it_does_not_own(case, cli, model_copy, tmp_path):
    out, names = BAD_OUTS[case](model_copy, tmp_path)
    before = checksums(tmp_path)
    assert_refused(cli("export", model_copy, "--out", out), *names, code=1)
    assert checksums(tmp_path) == before


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("missing", ["no-such-adapter", "not found"]),
        ("no-weights", ["adapter_model.safetensors", "missing"]),
        ("truncated-config", ["adapter_config.json", "not valid JSON"]),
        ("truncated-weights", ["adapter_model.safetensors", "truncated"]),
    ],
)
def test_export_names_a_bad_adapter(case, names, cli, model_copy, adapter_dir, tmp_path):
    adapter = tmp_path / "no-such-adapter"
    if case != "missing":
        adapter = Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))
        if case == "no-weights":
            (adapter / "adapter_model.safetensors").unlink()
        elif case == "truncated-config":
            _truncate(adapter / "adapter_config.json")
        else:
            _truncate(adapter / "adapter_model.safetensors")
    before = checksums(tmp_path)
    assert_refused(cli("export", model_copy, "--out", tmp_path / "out", "--adapter", adapter), *names, code=1)
    assert checksums(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------
# Exports keyed by content: stale copies, half-written folders, killed runs


def _changed_checkpoint(model_dir: Path, dest: Path) -> Path:
    """A different checkpoint of the same shape: the language model's head shifted."""
    import torch

    from mllm.model import EmoReasonForConditionalGeneration

    model = EmoReasonForConditionalGeneration.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.base.lm_head.weight.add_(1.0)
    model.save_pretrained(dest)
    return dest


def _exported_head(lm_dir: Path):
    from safetensors.torch import load_file

    return load_file(lm_dir / "model.safetensors")["lm_head.weight"]


def test_export_follows_content_not_mtime(cli, model_copy, tmp_path):
    """`cp -p` / `rsync -a` of a different checkpoint with an older mtime: the export is rebuilt, not served stale.
    An unchanged checkpoint is not re-exported."""
    import torch

    from mllm.model import EmoReasonForConditionalGeneration

    out = tmp_path / "served"
    result = cli("export", model_copy, "--out", out)
    assert result.code == 0 and "(written)" in result.out, result.err
    first = _exported_head(out / "language_model")
    stamp = (out / "language_model" / "model.safetensors").stat().st_mtime_ns
    assert "up to date" in cli("export", model_copy, "--out", out).out
    assert (out / "language_model" / "model.safetensors").stat().st_mtime_ns == stamp

    other = _changed_checkpoint(model_copy, tmp_path / "other")
    weights = model_copy / "model.safetensors"
    shutil.copy2(other / "model.safetensors", weights)  # as `cp -p`: content new, mtime carried over...
    old = time.time() - 3600
    os.utime(weights, (old, old))  # ...and older than the export
    result = cli("export", model_copy, "--out", out)
    assert result.code == 0 and "(written)" in result.out, result.err
    now = _exported_head(out / "language_model")
    assert not torch.equal(now, first)
    expected = EmoReasonForConditionalGeneration.from_pretrained(str(model_copy)).base.lm_head.weight
    torch.testing.assert_close(now, expected.detach(), atol=0, rtol=0)


def test_the_export_under_served_is_keyed_by_content_and_healed(model_copy, tiny_processor):
    """The serving engine's export in MODEL/served/: reused while the content is unchanged, rebuilt after a
    same-size change with an older mtime, and rebuilt when an earlier run left it half-written or a file was
    damaged afterwards."""
    import torch

    from mllm.export import EXPORT_MARKER, served_language_model
    from mllm.model import EmoReasonForConditionalGeneration

    loads = []

    def load():
        loads.append(1)
        return EmoReasonForConditionalGeneration.from_pretrained(str(model_copy)), tiny_processor.tokenizer

    lm = served_language_model(model_copy, load)
    assert lm == model_copy / "served" / "language_model" and len(loads) == 1
    served_language_model(model_copy, load)
    assert len(loads) == 1  # unchanged content: reused without loading the model

    # Half-written by an older version (no marker, truncated weights): rebuilt, not "Engine core failed" forever.
    marker = lm / EXPORT_MARKER
    marker.unlink()
    _truncate(lm / "model.safetensors")
    served_language_model(model_copy, load)
    assert len(loads) == 2 and marker.exists()
    from mllm.checkpoints import check_safetensors

    check_safetensors(lm / "model.safetensors")

    # Damaged after completion (the marker's sizes no longer match): rebuilt.
    _truncate(lm / "tokenizer.json")
    served_language_model(model_copy, load)
    assert len(loads) == 3 and json.loads((lm / "tokenizer.json").read_text())

    # A different checkpoint copied in with an older mtime: rebuilt with its weights.
    weights = model_copy / "model.safetensors"
    stale_head = _exported_head(lm)
    shutil.copy2(_changed_checkpoint(model_copy, model_copy.parent / "other") / "model.safetensors", weights)
    old = time.time() - 3600
    os.utime(weights, (old, old))
    served_language_model(model_copy, load)
    assert len(loads) == 4
    torch.testing.assert_close(_exported_head(lm), stale_head + 1.0, atol=1e-6, rtol=0)


def test_killed_export_litter_is_removed_and_the_previous_export_kept(model_copy, tiny_processor):
    from mllm.export import served_language_model
    from mllm.model import EmoReasonForConditionalGeneration

    def load():
        return EmoReasonForConditionalGeneration.from_pretrained(str(model_copy)), tiny_processor.tokenizer

    lm = served_language_model(model_copy, load)
    before = checksums(lm)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    litter = lm.parent / f".language_model.emoreason-tmp-{dead.pid}-abc123"
    litter.mkdir()
    (litter / "model.safetensors").write_bytes(b"half")
    assert served_language_model(model_copy, lambda: pytest.fail("re-exported an intact export")) == lm
    assert not litter.exists()
    assert checksums(lm) == before


def test_export_with_then_without_an_adapter_leaves_no_stale_lora(cli, model_copy, adapter_dir, tmp_path):
    out = tmp_path / "served"
    result = cli("export", model_copy, "--out", out, "--adapter", adapter_dir)
    assert result.code == 0, result.err
    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "language_model").resolve())
    assert "lora: " in cli("export", model_copy, "--out", out, "--adapter", adapter_dir).out
    result = cli("export", model_copy, "--out", out)
    assert result.code == 0 and not (out / "lora").exists(), result.err
    assert (out / "language_model" / "config.json").exists()


def test_a_half_written_export_folder_is_healed(cli, model_copy, tmp_path):
    """An --out folder of ours whose language_model was cut short (no completion marker) is rewritten."""
    from mllm.checkpoints import check_safetensors
    from mllm.export import EXPORT_MARKER

    out = tmp_path / "served"
    assert cli("export", model_copy, "--out", out).code == 0
    (out / "language_model" / EXPORT_MARKER).unlink()
    _truncate(out / "language_model" / "model.safetensors")
    result = cli("export", model_copy, "--out", out)
    assert result.code == 0 and "(written)" in result.out, result.err
    check_safetensors(out / "language_model" / "model.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# make-tiny


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("user-folder", ["thesis", "folder of other files"]),
        ("existing-file", ["notes.txt", "not a folder"]),
        ("refused-base-qwen2_vl", ["qwen2_vl", "M-RoPE"]),
        ("refused-base-gemma3", ["gemma3", "bidirectional"]),
        ("unknown-base", ["bert", "supported: ['internvl', 'llava_onevision', 'qwen2_5_vl', 'qwen3_5', 'qwen3_vl']"]),
    ],
)
def test_make_tiny_refuses(case, names, cli, tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("\\chapter{Introduction}\n")
    (tmp_path / "notes.txt").write_text("do not overwrite\n")
    before = checksums(tmp_path)
    out = {"user-folder": tmp_path / "thesis", "existing-file": tmp_path / "notes.txt"}.get(case, tmp_path / "tiny")
    base = case.removeprefix("refused-base-") if case.startswith("refused") else "bert"
    args = ["make-tiny", out] + ([] if case in ("user-folder", "existing-file") else ["--base", base])
    assert_refused(cli(*args), *names, code=1)
    assert checksums(tmp_path) == before
