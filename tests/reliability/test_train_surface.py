"""`emoreason train` keeps the bad-input rules: every bad recipe, option, value and output folder is one line on
stderr naming the field, the recipe's line or the folder, exit 1, no traceback; it is refused before any model
loads (a spy on the loader proves it) and before an output folder is made; the user's files stay as they were
(checksums); a resume after a kill during the final save ends at the right step; the model card is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SFT_RECIPE, sft_args
from tests.reliability.conftest import assert_refused, checksums

REPO = Path(__file__).resolve().parents[2]
GRPO_RECIPE = REPO / "train" / "recipes" / "grpo_tiny_cpu.yaml"


@pytest.fixture
def loads(monkeypatch):
    """Every model load of the run, recorded (a refused run must have loaded none)."""
    import mllm.export

    calls = []
    real = mllm.export.load_model

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mllm.export, "load_model", spy)
    return calls


@pytest.fixture
def data(expression_data, tmp_path):
    """A copy of the session's dataset, so a failure here can never damage the shared one."""
    copy = tmp_path / "data"
    shutil.copytree(expression_data, copy)
    return copy


def refused_early(result, tmp_path, before, loads, *names) -> str:
    """One clean line naming `names`, no model loaded, nothing under `tmp_path` changed or created."""
    line = assert_refused(result, *names, code=1)
    assert "internal error" not in result.err, result.err
    assert loads == [], "the model was loaded before the refusal"
    assert checksums(tmp_path) == before
    return line


# ---------------------------------------------------------------------------------------------------------------
# Values on the command line: refused by the recipe's __post_init__ (TrlParser) before anything loads

NOT_INSTALLED = [
    (name, args)
    for name, module, args in [
        ("optim-needs-bitsandbytes", "bitsandbytes", ["--optim", "adamw_bnb_8bit"]),
        ("report_to-not-installed", "wandb", ["--report_to", "wandb"]),
    ]
    if __import__("importlib.util").util.find_spec(module) is None
]

CLI_CASES = [
    ("max_steps-negative", ["--max_steps", "-5"], "max_steps"),
    ("max_steps-zero", ["--max_steps", "0"], "max_steps"),
    ("epochs-zero-without-max_steps", ["--max_steps", "-1", "--num_train_epochs", "0"], "num_train_epochs"),
    ("epochs-inf", ["--num_train_epochs", "inf"], "num_train_epochs"),
    ("learning_rate-nan", ["--learning_rate", "nan"], "learning_rate"),
    ("learning_rate-negative", ["--learning_rate", "-0.001"], "learning_rate"),
    ("batch-negative", ["--per_device_train_batch_size", "-2"], "per_device_train_batch_size"),
    ("grad-accumulation-zero", ["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
    ("save_steps-negative", ["--save_steps", "-1"], "save_steps"),
    ("logging_steps-fraction-above-1", ["--logging_steps", "2.5"], "logging_steps"),
    ("save_total_limit-zero", ["--save_total_limit", "0"], "save_total_limit"),
    ("seed-negative", ["--seed", "-1"], "seed"),
    ("max_steps-overflow", ["--max_steps", "99999999999"], "max_steps"),
    ("lora_dropout-1", ["--lora_dropout", "1"], "lora_dropout"),
    ("lora_alpha-zero", ["--lora_alpha", "0"], "lora_alpha"),
    ("new_modules_lr-negative", ["--new_modules_lr", "-1"], "new_modules_lr"),
    ("max_length-zero", ["--max_length", "0"], "max_length"),
    ("weight_decay-inf", ["--weight_decay", "inf"], "weight_decay"),
    ("max_grad_norm-nan", ["--max_grad_norm", "nan"], "max_grad_norm"),
    ("adam_beta2-1", ["--adam_beta2", "1"], "adam_beta2"),
    ("warmup-negative", ["--warmup_steps", "-1"], "warmup_steps"),
    ("max_train_samples-zero", ["--max_train_samples", "0"], "max_train_samples"),
    ("not-a-number", ["--max_steps", "abc"], "max_steps"),
    ("value-missing", ["--learning_rate"], "learning_rate"),
    ("not-a-bool", ["--resume", "maybe"], "resume"),
    ("unknown-option", ["--lerning_rate", "1"], "--lerning_rate"),
    ("abbreviated-option", ["--learning", "1"], "--learning"),
    ("stray-argument", ["recipe.yaml"], "recipe.yaml"),
    ("scheduler-unknown", ["--lr_scheduler_type", "foo"], "lr_scheduler_type"),
    ("optim-unknown", ["--optim", "nope"], "optim"),
    ("report_to-unknown", ["--report_to", "foo"], "report_to"),
    ("eval-without-split", ["--eval_strategy", "steps"], "eval_strategy"),
    ("resume_from_checkpoint-ignored", ["--resume_from_checkpoint", "x"], "resume_from_checkpoint"),
    ("push_to_hub", ["--push_to_hub", "true"], "push_to_hub"),
    ("model_init_kwargs-bad-json", ["--model_init_kwargs", "{bad"], "model_init_kwargs"),
    ("model_init_kwargs-bad-dtype", ["--model_init_kwargs", '{"dtype": "float99"}'], "model_init_kwargs"),
    ("model_init_kwargs-ignored-key", ["--model_init_kwargs", '{"device_map": "auto"}'], "model_init_kwargs"),
    ("lr_scheduler_kwargs-text", ["--lr_scheduler_kwargs", "fast"], "lr_scheduler_kwargs"),
    ("deepspeed-missing-file", ["--deepspeed", "/nonexistent/zero3.json"], "deepspeed"),
    ("fsdp-single-process", ["--fsdp", "full_shard"], "fsdp"),
    ("torch_compile_backend-unknown", ["--torch_compile_backend", "nope"], "torch_compile_backend"),
    ("accelerator_config-unknown-key", ["--accelerator_config", '{"a": 1}'], "accelerator_config"),
    ("accelerator_config-missing-file", ["--accelerator_config", "/nonexistent/acc.json"], "accelerator_config"),
    ("pad_to_multiple_of-negative", ["--pad_to_multiple_of", "-1"], "pad_to_multiple_of"),
    ("log_level-unknown", ["--log_level", "loud"], "log_level"),
    ("nothing-to-train", ["--lora_r", "0", "--new_modules_lr", "0"], "new_modules_lr"),
    ("stage-unknown", ["--stage", "x"], "stage"),
    ("tasks-unknown", ["--tasks", "expr", "zz"], "tasks"),
    ("output_dir-empty", ["--output_dir="], "output_dir"),
    ("config-twice", ["--config", str(SFT_RECIPE)], "--config"),
    *[(name, args, args[0].lstrip("-")) for name, args in NOT_INSTALLED],
]


@pytest.mark.parametrize("name, extra, field", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_values_are_refused_before_the_model_loads(name, extra, field, cli, tiny_dir, data, tmp_path, loads):
    before = checksums(tmp_path)
    result = cli(*sft_args(tiny_dir / "emoreason", data, tmp_path / "run", "--max_steps", 2, *extra))
    line = refused_early(result, tmp_path, before, loads, field)
    assert line.startswith("emoreason train: error: ")


GRPO_CASES = [
    ("num_generations-1", ["--num_generations", "1"], "num_generations"),
    ("num_generations-not-dividing", ["--num_generations", "5"], "num_generations"),
    ("vllm_mode-server", ["--use_vllm", "true", "--vllm_mode", "server"], "vllm_mode"),
    (
        "vllm_tensor_parallel_size-2",
        ["--use_vllm", "true", "--vllm_tensor_parallel_size", "2"],
        "vllm_tensor_parallel_size",
    ),
    ("vllm_enable_sleep_mode", ["--use_vllm", "true", "--vllm_enable_sleep_mode", "true"], "vllm_enable_sleep_mode"),
    ("vllm_sync_steps-zero", ["--use_vllm", "true", "--vllm_sync_steps", "0"], "vllm_sync_steps"),
    ("vllm_kv_cache_gib-zero", ["--use_vllm", "true", "--vllm_kv_cache_gib", "0"], "vllm_kv_cache_gib"),
    (
        "vllm_gpu_memory_utilization-2",
        ["--use_vllm", "true", "--vllm_gpu_memory_utilization", "2"],
        "vllm_gpu_memory_utilization",
    ),
    ("rewards-unknown", ["--rewards", "nope"], "rewards"),
    ("reward_weights-nan", ["--reward_weights", "nan", "1", "1", "1", "1"], "reward_weights"),
    ("reward_weights-count", ["--reward_weights", "1", "2"], "reward_weights"),
    ("temperature-zero", ["--temperature", "0"], "temperature"),
    ("top_p-zero", ["--top_p", "0"], "top_p"),
    ("beta-negative", ["--beta", "-1"], "beta"),
    ("epsilon-nan", ["--epsilon", "nan"], "epsilon"),
    ("sync_ref_model", ["--sync_ref_model", "true"], "sync_ref_model"),
    ("lora_r-zero", ["--lora_r", "0"], "lora_r"),
    ("length_max_chars-zero", ["--length_max_chars", "0"], "length_max_chars"),
    ("steps_per_generation-zero", ["--steps_per_generation", "0"], "steps_per_generation"),
    ("loss_type-unknown", ["--loss_type", "x"], "loss_type"),
    ("eval_split-ignored", ["--eval_split", "test"], "eval_split"),
]


def test_grpo_recipe_with_null_generations_names_the_line(cli, tiny_dir, data, tmp_path, loads):
    recipe = tmp_path / "grpo.yaml"
    text = GRPO_RECIPE.read_text().replace("num_generations: 8", "num_generations: null")
    recipe.write_text(text)
    before = checksums(tmp_path)
    result = cli("train", "grpo", "--config", recipe, "--model", tiny_dir / "emoreason", "--data", data,
                 "--output_dir", tmp_path / "run")  # fmt: skip
    refused_early(result, tmp_path, before, loads, f"{recipe}:{_line_of(text, 'num_generations:')}: num_generations")


@pytest.mark.parametrize("name, extra, field", GRPO_CASES, ids=[c[0] for c in GRPO_CASES])
def test_bad_grpo_values_are_refused_before_the_model_loads(name, extra, field, cli, tiny_dir, data, tmp_path, loads):
    before = checksums(tmp_path)
    result = cli("train", "grpo", "--config", GRPO_RECIPE, "--model", tiny_dir / "emoreason", "--data", data,
                 "--output_dir", tmp_path / "run", "--report_to", "none", "--max_steps", 2, *extra)  # fmt: skip
    refused_early(result, tmp_path, before, loads, field)


# ---------------------------------------------------------------------------------------------------------------
# Values in the recipe file: refused naming RECIPE:LINE and the field


def _recipe_text(tiny_dir, data, out, changes: dict[str, str], append: str = "") -> str:
    """The tiny SFT recipe with our paths, `changes` applied to its fields, `append` added at the end."""
    text = SFT_RECIPE.read_text()
    values = {"model": str(tiny_dir / "emoreason"), "data": str(data), "output_dir": str(out), "max_steps": "2"}
    lines = []
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        if key in {**values, **changes} and not line.startswith("#"):
            line = f"{key}: {changes.get(key, values.get(key))}"
        lines.append(line)
    new = [f"{k}: {v}" for k, v in changes.items() if not any(x.startswith(f"{k}:") for x in lines)]
    return "\n".join([*lines, *new, *([append] if append else [])]) + "\n"


def _line_of(text: str, prefix: str, last: bool = False) -> int:
    numbers = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(prefix)]
    return numbers[-1] if last else numbers[0]


def _bomb() -> str:
    """A YAML alias bomb: nine lists of nine references, nine levels deep."""
    text, previous = "[&a0 [x, x, x, x, x, x, x, x, x]", "a0"
    for level in range(1, 9):
        text += f", &a{level} [{', '.join(['*' + previous] * 9)}]"
        previous = f"a{level}"
    return text + "]"


YAML_CASES = [
    ("list-for-a-number", {"learning_rate": "[1, 2]"}, "", "learning_rate"),
    ("yaml-nan", {"learning_rate": ".nan"}, "", "learning_rate"),
    ("text-nan", {"learning_rate": "nan"}, "", "learning_rate"),
    ("text-for-a-number", {"learning_rate": "fast"}, "", "learning_rate"),
    ("yaml-inf-epochs", {"num_train_epochs": ".inf"}, "", "num_train_epochs"),
    ("max_steps-negative", {"max_steps": "-5"}, "", "max_steps"),
    ("max_steps-float", {"max_steps": "5.0"}, "", "max_steps"),
    ("batch-negative", {"per_device_train_batch_size": "-2"}, "", "per_device_train_batch_size"),
    ("bool-for-int", {"lora_r": "true"}, "", "lora_r"),
    ("date-for-int", {"seed": "2024-01-01"}, "", "seed"),
    ("mapping-for-text", {"output_dir": "{a: 1}"}, "", "output_dir"),
    ("null-for-a-number", {"learning_rate": "null"}, "", "learning_rate"),
    ("alias-bomb", {"tasks": _bomb()}, "", "tasks"),
    ("unknown-field", {}, "lerning_rate: 0.1", "lerning_rate"),
    ("field-given-twice", {}, "seed: 3", "seed"),
    ("field-name-not-text", {}, "1: 2", "field name"),
    ("env-not-a-mapping", {}, "env: [1]", "env"),
]


@pytest.mark.parametrize("name, changes, append, field", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_bad_recipe_values_name_the_line(name, changes, append, field, cli, tiny_dir, data, tmp_path, loads):
    recipe = tmp_path / "recipe.yaml"
    text = _recipe_text(tiny_dir, data, tmp_path / "run", changes, append)
    recipe.write_text(text)
    before = checksums(tmp_path)
    result = cli("train", "sft", "--config", recipe, "--report_to", "none")
    key = field if field != "field name" else "1"
    line = _line_of(text, f"{key}:", last=bool(append))
    refused_early(result, tmp_path, before, loads, f"{recipe}:{line}:", field)


def test_the_command_line_overrides_the_recipe_and_is_named_without_a_line(cli, tiny_dir, data, tmp_path, loads):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe_text(tiny_dir, data, tmp_path / "run", {"learning_rate": ".nan"}))
    before = checksums(tmp_path)
    assert "learning_rate" in refused_early(cli("train", "sft", "--config", recipe), tmp_path, before, loads)
    result = cli("train", "sft", "--config", recipe, "--learning_rate", "-1")  # the command line's value is bad
    line = refused_early(result, tmp_path, before, loads, "learning_rate: must be >= 0")
    assert str(recipe) not in line


# ---------------------------------------------------------------------------------------------------------------
# The recipe file itself


def _write(name: str, data: bytes):
    def make(path: Path) -> Path:
        (path / name).write_bytes(data)
        return path / name

    return make


def _folder(path: Path) -> Path:
    (path / "recipe.yaml").mkdir()
    return path / "recipe.yaml"


FILE_CASES = [
    ("missing", lambda p: p / "missing.yaml", "recipe file not found", None),
    ("a-folder", _folder, "is a folder", None),
    ("empty", _write("r.yaml", b""), "empty recipe", None),
    ("only-comments", _write("r.yaml", b"# nothing here\n"), "empty recipe", None),
    ("a-list", _write("r.yaml", b"- model: x\n- data: y\n"), "mapping", 1),
    ("a-scalar", _write("r.yaml", b"just some text\n"), "mapping", 1),
    ("syntax-error", _write("r.yaml", b"model: x\nmax_steps:\n\t- 5\n"), "YAML syntax error", 3),
    ("unclosed-list", _write("r.yaml", b"model: x\nmax_steps: [1\nseed: 2\n"), "on line 2", 3),
    ("binary-garbage", _write("r.yaml", bytes(range(128, 256)) * 20), "not UTF-8", 1),
    ("nul-bytes", _write("r.yaml", b"model: x\n\x00\x01 binary\n"), "not valid YAML", 2),
    ("too-large", _write("r.yaml", b"#" * (2 << 20)), "too large", None),
    ("nested-too-deeply", _write("r.yaml", b"a: " + b"[" * 5000 + b"]" * 5000), "nested too deeply", None),
]


@pytest.mark.parametrize("name, make, reason, line", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_recipe_files_are_named(name, make, reason, line, cli, tiny_dir, data, tmp_path, loads):
    recipe = make(tmp_path)
    before = checksums(tmp_path)
    args = sft_args(tiny_dir / "emoreason", data, tmp_path / "run")
    args[args.index("--config") + 1] = str(recipe)
    where = f"{recipe}:{line}:" if line else f"{recipe}:"
    refused_early(cli(*args), tmp_path, before, loads, where, reason)


def test_config_without_a_path(cli, tmp_path, loads):
    before = checksums(tmp_path)
    refused_early(cli("train", "sft", "--config"), tmp_path, before, loads, "--config: no recipe file given")


def test_a_fifo_recipe_does_not_block(tiny_dir, data, tmp_path):
    """Opening a FIFO waits for a writer: the recipe is refused from its file type, never opened."""
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    args = sft_args(tiny_dir / "emoreason", data, tmp_path / "run")
    args[args.index("--config") + 1] = str(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "mllm.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(fifo) in errors[0] and "not a regular file" in errors[0], done.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------
# The output folder: never an input, a dataset, or a folder of the user's (links followed)


def _old_dataset(path: Path, data: Path) -> Path:
    """A dataset written by an emoreason that did not record kinds in its marker."""
    shutil.copytree(data, path)
    (path / ".emoreason-output").write_text("This folder holds output written by emoreason.\n")
    return path


def _users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "README.md").write_text("my project notes\n")
    return path


def _link_to(target):
    def make(path: Path, data: Path, tiny: Path) -> Path:
        path.symlink_to(target(path.parent, data, tiny))
        return path

    return make


OUTPUT_CASES = [
    ("link-to-the-data", _link_to(lambda root, data, tiny: data), "input"),
    ("link-to-a-users-folder", _link_to(lambda root, data, tiny: _users_folder(root / "mine")), "other files"),
    ("a-dataset-folder", lambda p, data, tiny: shutil.copytree(data, p) and p, "another kind"),
    ("an-old-dataset-folder", lambda p, data, tiny: _old_dataset(p, data), "not a training run"),
    ("inside-the-data", lambda p, data, tiny: data / "run", "inside the input"),
    ("inside-the-model", lambda p, data, tiny: tiny / "run", "inside the input"),
    ("containing-the-data", lambda p, data, tiny: data.parent, "contains the input"),
    ("a-users-folder", lambda p, data, tiny: _users_folder(p), "other files"),
    ("a-file", lambda p, data, tiny: p.write_text("x") and p, "not a folder"),
]


@pytest.mark.parametrize("name, make, reason", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_folders_that_are_not_ours_are_refused(name, make, reason, cli, tiny_dir, data, tmp_path, loads):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir / "emoreason", model)
    out = make(tmp_path / "out", data, model)
    before = checksums(tmp_path)
    result = cli(*sft_args(model, data, out, "--max_steps", 2))
    refused_early(result, tmp_path, before, loads, "--output_dir", reason)


# ---------------------------------------------------------------------------------------------------------------
# A finished run: resumed, its model/ replaced; the user's files there are never lost


@pytest.fixture
def finished(sft_run, tmp_path):
    """A copy of the session's 6-step run (checkpoints 3 and 6, model/)."""
    run = tmp_path / "run"
    shutil.copytree(sft_run, run, symlinks=True)
    return run


RESUME_CASES = [
    ("card-edited", lambda run: (run / "model" / "README.md").open("a").write("my notes\n"), "README.md"),
    ("notes-added", lambda run: (run / "model" / "notes.txt").write_text("mine\n"), "notes.txt"),
    ("config-edited", lambda run: (run / "model" / "config.json").open("a").write(" "), "config.json"),
    ("past-max_steps", lambda run: None, "past max_steps"),
]


@pytest.mark.parametrize("name, change, named", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_never_replaces_the_users_files(name, change, named, cli, tiny_dir, data, finished, tmp_path, loads):
    change(finished)
    before = checksums(tmp_path)
    steps = 4 if name == "past-max_steps" else 6
    result = cli(*sft_args(tiny_dir / "emoreason", data, finished, "--max_steps", steps, "--resume"))
    refused_early(result, tmp_path, before, loads, named)


def test_a_run_folder_without_resume_is_refused(cli, tiny_dir, data, finished, tmp_path, loads):
    before = checksums(tmp_path)
    refused_early(cli(*sft_args(tiny_dir / "emoreason", data, finished)), tmp_path, before, loads, "--resume")


def test_resume_keeps_the_users_readme_and_writes_our_model_card(cli, tiny_dir, data, finished, loads):
    """TRL wrote its card (`fine-tuned version of [None]`) over OUTPUT_DIR/README.md at every checkpoint."""
    (finished / "README.md").write_text("my notes about this run\n")
    result = cli(*sft_args(tiny_dir / "emoreason", data, finished, "--max_steps", 7, "--resume"))
    assert result.code == 0, result.err
    assert (finished / "README.md").read_text() == "my notes about this run\n"
    assert (finished / "checkpoint-7" / ".emoreason-complete").is_file()
    report = json.loads((finished / "model" / "train_report.json").read_text())
    assert report["global_step"] == 7 and report["train_loss"] > 0
    card = (finished / "model" / "README.md").read_text()
    assert "[None]" not in card and "fine-tuned version" not in card
    for expected in (str(tiny_dir / "base"), "`rafdb`", str(data), "learning_rate: 0.003", "lora_r: 8",
                     "| global_step | 7 |", "train_loss", "basic7", "emoreason analyze"):  # fmt: skip
        assert expected in card, expected
    assert not [p for p in finished.rglob("README.md") if "[None]" in p.read_text()]


# ---------------------------------------------------------------------------------------------------------------
# A kill during the final save, then --resume: the right step, the right weights


KILL_CODE = """
import os, signal, sys
import mllm.outputs, train.final_model
from mllm.cli import main
where = sys.argv[1]
if where == "model-folder":  # inside the final model's temporary folder, before its rename
    real = mllm.outputs.atomic_write_text
    def write(final, text):
        if os.path.basename(final) == "train_report.json":
            os.kill(os.getpid(), signal.SIGKILL)
        real(final, text)
    mllm.outputs.atomic_write_text = write
else:  # after the rename, during the vLLM export
    train.final_model.export_final_model = lambda final: os.kill(os.getpid(), signal.SIGKILL)
main(sys.argv[2:])
"""


@pytest.mark.parametrize("where", ["model-folder", "export"])
def test_a_kill_during_the_final_save_resumes_to_the_last_step(where, cli, tiny_dir, data, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = sft_args(tiny_dir / "emoreason", data, run, "--max_steps", 4, "--save_steps", 2,
                    "--per_device_train_batch_size", 4)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL_CODE, where, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoint-4" / ".emoreason-complete").is_file()
    assert (run / "model").exists() == (where == "export")

    result = cli(*args, "--resume")
    assert result.code == 0, result.err
    report = json.loads((run / "model" / "train_report.json").read_text())
    assert report["global_step"] == 4  # transformers would have run a fifth step: "step 5 of 4"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(run.rglob("*.emoreason-tmp-*"))
    assert (run / "model" / ".emoreason-manifest.json").is_file() and (run / "model" / "served").is_dir()
    final = load_file(run / "model" / "adapter" / "adapter_model.safetensors")
    saved = load_file(run / "checkpoint-4" / "adapter_model.safetensors")
    assert final.keys() == saved.keys()
    assert all((final[k] == saved[k]).all() for k in final)  # the last checkpoint's weights, not one step more


# ---------------------------------------------------------------------------------------------------------------
# A run that fails after the folder was claimed leaves the folder as it found it


@pytest.mark.parametrize("before_run", ["new", "empty"])
def test_a_failure_before_the_first_checkpoint_takes_the_folder_back(before_run, cli, tiny_dir, data, tmp_path):
    out = tmp_path / "new" / "run"
    if before_run == "empty":
        out.mkdir(parents=True)
    # A sample longer than max_length is found by the collator, at the first step (after the model loaded).
    result = cli(*sft_args(tiny_dir / "emoreason", data, out, "--max_steps", 2, "--max_length", 10))
    assert_refused(result, "max_length", code=1)
    if before_run == "new":
        assert not (tmp_path / "new").exists()
    else:
        assert out.is_dir() and not any(out.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# train synthesize


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--seed", "-1"], "--seed"),
        (["--num-generations", "x"], "--num-generations"),
        (["--bogus"], "--bogus"),
    ],
    ids=["temperature-nan", "temperature-inf", "seed-negative", "not-a-number", "unknown-option"],
)
def test_synthesize_options_are_refused_in_one_line(extra, named, cli, tiny_dir, data, tmp_path, loads):
    before = checksums(tmp_path)
    result = cli("train", "synthesize", "--model", tiny_dir / "emoreason", "--data", data,
                 "--out", tmp_path / "synth", *extra)  # fmt: skip
    refused_early(result, tmp_path, before, loads, named)
