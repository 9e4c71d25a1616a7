"""Stage 1: `emoreason train sft` writes a final model that predict loads, trains what it should and nothing else,
feeds every modality to TRL's loss, refuses bad recipes and data in one line, and resumes after SIGKILL."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mllm.cli import main
from tests.conftest import SFT_RECIPE, sft_args

REPO = Path(__file__).resolve().parents[2]


def _recipe(tiny_dir, data, out, *extra):
    from train.config import SFTRecipe, parse_recipe

    return parse_recipe(SFTRecipe, sft_args(tiny_dir / "emoreason", data, out, *extra)[2:])


def test_final_model_folder_has_adapter_new_modules_and_export(sft_run, tiny_dir):
    from mllm.export import EXPORT_MARKER
    from mllm.model import EmoReasonForConditionalGeneration

    final = sft_run / "model"
    for name in ("config.json", "model.safetensors", "emoreason_processor.json", "tokenizer.json"):
        assert (final / name).is_file(), name
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert (final / "served" / "language_model" / EXPORT_MARKER).is_file()
    assert (final / "served" / "lora" / "adapter_config.json").is_file()
    for step in (3, 6):
        assert (sft_run / f"checkpoint-{step}" / ".emoreason-complete").is_file()
    report = json.loads((final / "train_report.json").read_text())
    assert report["global_step"] == 6 and report["label_space"] == "basic7"
    assert not list(sft_run.rglob("*.emoreason-tmp-*"))

    start = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_dir / "emoreason"))
    end = EmoReasonForConditionalGeneration.from_pretrained(str(final))
    assert end.config.label_space == "basic7"  # predict asks with the dataset's labels
    start_params, end_params = dict(start.named_parameters()), dict(end.named_parameters())
    new = {n for n, p in start.named_parameters() if any(p is q for q in start.new_module_parameters())}
    frozen_changed = [n for n in start_params if n not in new and not torch.equal(start_params[n], end_params[n])]
    new_unchanged = [n for n in new if torch.equal(start_params[n], end_params[n])]
    assert not frozen_changed  # the language model, vision tower and audio encoder are saved as they were
    # Every new-module parameter the data reach trained; these photographs have no audio, so the audio branch
    # received no gradient and is saved as it was.
    assert new_unchanged and all(n.startswith("audio_branch.") for n in new_unchanged)
    assert any(n.startswith("face_attention.") for n in new) and not any("face_attention" in n for n in new_unchanged)
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # LoRA B starts at zero


def test_predict_loads_the_run_folder(sft_run, expression_data):
    from datasets import load_from_disk

    from mllm.output import parse
    from mllm.predict import predict

    image = load_from_disk(str(expression_data))["test"][0]["image"]
    result = predict(sft_run, image, max_new_tokens=24)
    assert isinstance(result["completion"], str) and result["completion"]
    assert result["ok"] == parse(result["completion"], "expr", "basic7").ok


def _trainer(tiny_dir, data, out):
    from train.sft import build_trainer

    return build_trainer(_recipe(tiny_dir, data, out, "--max_steps", 1))


def test_audio_and_landmarks_reach_trls_loss(tiny_dir, expression_data, tmp_path, video_with_audio):
    trainer, processor, _, _ = _trainer(tiny_dir, expression_data, tmp_path / "run")
    video = {"type": "video", "video": str(video_with_audio)}
    chat = [
        {"role": "user", "content": [video, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "<think>AU6 and AU12.</think><answer>Happiness</answer>"},
    ]
    batch = processor([chat], return_labels=True, padding_side="right")
    assert batch["image_has_face"].any() and "audio_values" in batch

    def loss(**change):
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, {**batch, **change}))

    real = loss()
    assert loss(audio_values=torch.zeros_like(batch["audio_values"])) != pytest.approx(real, abs=1e-6)
    assert loss(image_landmarks=torch.zeros_like(batch["image_landmarks"])) != pytest.approx(real, abs=1e-6)
    assert loss(pixel_values=torch.zeros_like(batch["pixel_values"])) != pytest.approx(real, abs=1e-6)
    # The fused path is the composed model's own loss, token for token.
    with torch.no_grad():
        assert trainer.model(**batch).loss.item() == pytest.approx(real, rel=1e-5)


def _fails(argv, capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emoreason train: error:"), err
    return err[0]


def test_bad_recipes_and_data_are_refused_in_one_line(tiny_dir, expression_data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SFT_RECIPE.read_text() + "lerning_rate: 0.1\n")
    args = sft_args(tiny_dir / "emoreason", expression_data, tmp_path / "a")
    assert "lerning_rate" in _fails([*args[:3], str(bad), *args[4:]], capsys)
    assert "recipe file not found" in _fails(["train", "sft", "--config", str(tmp_path / "nope.yaml")], capsys)
    missing = sft_args(tiny_dir / "emoreason", tmp_path / "no-data", tmp_path / "b")
    assert "not a dataset folder" in _fails(missing, capsys)
    assert not (tmp_path / "b").exists()  # checked before the output folder is made
    lora = sft_args(tiny_dir / "emoreason", expression_data, tmp_path / "c", "--lora_dropout", 2)
    assert "lora_dropout" in _fails(lora, capsys)
    # A run folder is never reused without --resume.
    (tmp_path / "d" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "d" / ".emoreason-output").write_text("")
    assert "--resume" in _fails(sft_args(tiny_dir / "emoreason", expression_data, tmp_path / "d"), capsys)
    # A folder of the user's is never written into.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    mine = sft_args(tiny_dir / "emoreason", expression_data, tmp_path / "mine")
    assert "folder of other files" in _fails(mine, capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_target_outside_the_grammar_is_refused_naming_the_sample(tiny_dir, expression_data, tmp_path, capsys):
    import shutil

    from datasets import load_from_disk

    data = tmp_path / "data"
    splits = load_from_disk(str(expression_data))
    bad_id = splits["train"][1]["id"]
    splits["train"] = splits["train"].map(
        lambda row: {"target": row["target"].replace("</answer>", "") if row["id"] == bad_id else row["target"]}
    )
    splits.save_to_disk(str(data))
    shutil.copy(expression_data / "build_report.json", data)
    capsys.readouterr()
    assert bad_id in _fails(sft_args(tiny_dir / "emoreason", data, tmp_path / "run"), capsys)


# ---------------------------------------------------------------------------------------------------------------
# Resume after SIGKILL


def _weights(run: Path) -> dict:
    final = run / "model"
    return {**load_file(final / "adapter" / "adapter_model.safetensors"), **load_file(final / "model.safetensors")}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_dir, expression_data, tmp_path):
    steps = ["--max_steps", 8, "--save_steps", 2, "--logging_steps", 1, "--per_device_train_batch_size", 4]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mllm.cli", *sft_args(tiny_dir / "emoreason", expression_data, killed, *steps)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (killed / "checkpoint-4" / ".emoreason-complete").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-epoch: 3 steps of 4 samples make an epoch of these 12 photographs
    proc.wait()
    assert not (killed / "model").exists()

    # All three runs in one thread each: a different thread count sums in a different order, and Adam turns those
    # last-digit differences into ~1e-5 weight differences within 8 steps; with the same count resume is exact.
    for out, extra in ((killed, ["--resume"]), (tmp_path / "straight", [])):
        args = sft_args(tiny_dir / "emoreason", expression_data, out, *steps, *extra)
        subprocess.run([sys.executable, "-m", "mllm.cli", *args], cwd=REPO, env=env, check=True, capture_output=True)
    resumed = json.loads((killed / "model" / "train_report.json").read_text())
    assert resumed["global_step"] == 8
    assert not list(killed.rglob("*.emoreason-tmp-*"))
    a, b = _weights(killed), _weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_accelerate_launch_agree_on_the_final_weights(tiny_dir, expression_data, tmp_path):
    """The same command under `accelerate launch` with 2 processes (torch.distributed over gloo on CPU): each
    process trains on its own half of every batch, and all end with the same weights."""
    out = tmp_path / "ddp"
    port = str(_free_port())
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", port]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = sft_args(tiny_dir / "emoreason", expression_data, out, "--max_steps", 3, "--save_steps", 3,
                    "--per_device_train_batch_size", 4)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "mllm.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "model" / "train_report.json").read_text())
    assert report["processes"] == 2 and report["global_step"] == 3
    digests = report["weights_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # The processes took turns over the batches of 4: an epoch took half the steps of one process.
    from data_builders.read import load_split

    batches = math.ceil(len(load_split(expression_data, "train")) / 4)
    epoch = [h for h in report["log_history"] if h.get("step") == 3 and "epoch" in h][-1]["epoch"]
    assert epoch == pytest.approx(3 / math.ceil(batches / 2))
    assert not list(out.rglob("*.emoreason-tmp-*"))


def test_only_the_main_process_claims_the_run_folder(tmp_path, monkeypatch):
    """Two processes claiming one folder at once each saw the other's half-written marker as somebody else's file
    (a CI failure): a process of rank > 0 writes nothing and waits until the main process has claimed it."""
    import threading
    from types import SimpleNamespace

    from mllm.outputs import MARKER
    from train.model import claim_run_dir

    out = tmp_path / "run"
    recipe = SimpleNamespace(output_dir=str(out), resume=False)
    monkeypatch.setenv("RANK", "1")
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(claim_run_dir(recipe, protect=[])))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not out.exists()  # rank 1 waits and creates nothing
    monkeypatch.setenv("RANK", "0")
    assert claim_run_dir(recipe, protect=[]) is None
    waiter.join(timeout=10)
    assert not waiter.is_alive() and seen == [None]
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_training_asks_each_sample_its_question_in_varied_seeded_wordings():
    import random

    from mllm.labels import label_space
    from mllm.output import PARAPHRASES, question
    from train.data import vary_question

    asked = question("expr", label_space("basic7"))
    user = {"role": "user", "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": asked}]}
    messages = [{"role": "system", "content": "You are careful."}, user]

    def wordings(seed):
        rng = random.Random(seed)
        return [vary_question(messages, "expr", "basic7", rng)[1]["content"][1]["text"] for _ in range(200)]

    drawn = wordings(0)
    allowed = {asked} | {question("expr", label_space("basic7"), variant=k) for k in range(len(PARAPHRASES["expr"]))}
    assert set(drawn) == allowed  # every wording is used, the dataset's own among them
    assert drawn == wordings(0) and drawn != wordings(1)  # seeded
    varied = vary_question(messages, "expr", "basic7", random.Random(0))
    assert varied[0] == messages[0] and varied[1]["content"][0] == messages[1]["content"][0]  # the rest untouched
    assert all("{labels}" not in w for w in drawn)
