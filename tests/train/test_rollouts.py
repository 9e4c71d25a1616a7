"""GRPO rollouts in vLLM (`use_vllm: true`): vLLM samples with the policy's current adapter (its greedy answer is
the policy's own in transformers after 0, 1 and several optimiser steps, and the starting model's is not), the
log-probabilities it reports are the trainer's, and the run folder keeps nothing of vLLM's once the run ends."""

import json
from pathlib import Path

import torch

from mllm.cli import main

GRPO_RECIPE = Path(__file__).resolve().parents[2] / "train" / "recipes" / "grpo_tiny_cpu.yaml"


def _args(model, data, out, *extra):
    return ["--config", str(GRPO_RECIPE), "--model", str(model), "--data", str(data), "--output_dir", str(out),
            "--report_to", "none", "--log_completions", "false", "--use_vllm", "true", *map(str, extra)]  # fmt: skip


def _greedy_pair(trainer, prompt_json: str, n_tokens: int):
    """The greedy completion of one prompt from vLLM (with the adapter it was last synced) and from the policy in
    transformers (the current weights), and vLLM's without any adapter (the starting model: no sync)."""
    from serve.engine import encode_prompts

    rollouts = trainer.rollouts
    saved = trainer._media_rows
    ids, _, _ = trainer._tokenize_prompts([prompt_json])
    rows = trainer._media_rows
    trainer._media_rows = saved
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    composed = peft_model.get_base_model()
    media = {k: v for k, v in rows[0].items()}
    prompts = encode_prompts(composed, [torch.tensor(ids[0])], media, trainer._tokenizer.pad_token_id, "float32")
    params = rollouts.sampling_params(trainer.args, temperature=0.0, max_tokens=n_tokens, top_p=1.0, top_k=0,
                                      stop_token_ids=list(trainer.eos_token_ids))  # fmt: skip
    synced = rollouts.generate(prompts, params)[0][0]
    starting = rollouts.generate(prompts, params, lora=False)[0][0]
    was_training = peft_model.training
    peft_model.eval()
    with torch.no_grad():
        out = peft_model.generate(
            input_ids=torch.tensor([ids[0]]),
            attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long),
            max_new_tokens=n_tokens,
            do_sample=False,
            suppress_tokens=[composed.config.image_token_id, composed.config.audio_token_id],
            eos_token_id=list(trainer.eos_token_ids),
            pad_token_id=trainer._tokenizer.pad_token_id,
            **media,
        )
    peft_model.train(was_training)
    policy = out[0].tolist()
    return synced, policy, starting


def _policy_logprobs(trainer, prompt: list[int], row: dict, completion: list[int]) -> torch.Tensor:
    """The policy's log-probability of each completion token (transformers, current weights) as vLLM reports it: at
    temperature 1 its raw log-probabilities (the trainer's own), otherwise after the temperature and the logit bias
    that suppresses the media placeholders (top_p is 1 here)."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = peft_model.training
    peft_model.eval()
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), **row).logits[0]
    peft_model.train(was_training)
    logits = logits[len(prompt) - 1 : -1].float() / trainer.args.temperature
    if trainer.rollouts.logprobs_mode == "processed_logprobs":  # after the temperature and the logit bias
        for token, bias in trainer.rollouts.suppress.items():
            logits[:, token] += bias
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def _train_watching_vllm(model_dir, data, out, steps: int, *extra):
    """A short GRPO run with vLLM rollouts; at each generation, what vLLM and the policy answer greedily (and the
    starting model, in vLLM without the adapter) and how far vLLM's sampling log-probabilities are from the policy's.
    Returns (trainer, [(step, synced step, vLLM greedy, policy greedy, starting greedy)], [max |difference|])."""
    from train.config import GRPORecipe, parse_recipe
    from train.grpo import build_trainer

    recipe = parse_recipe(GRPORecipe, _args(model_dir, data, out, "--max_steps", steps, "--num_generations", 4,
                          "--per_device_train_batch_size", 4, "--max_completion_length", 12, "--learning_rate", 0.05,
                          "--beta", 0.0, "--top_p", 1.0, "--save_steps", 100,
                          # a reward that varies within a group even for a random model's text: its length
                          "--rewards", "length", "--reward_weights", 1.0, "--length_max_chars", 20,
                          *extra))  # fmt: skip
    trainer = build_trainer(recipe)[0]
    prompt = trainer.train_dataset[0]["prompt"]  # the schema's chat, as JSON text
    assert isinstance(prompt, str) and json.loads(prompt)
    original = trainer._generate_in_vllm
    seen, differences = [], []

    def spy(prompt_ids):
        result = original(prompt_ids)  # syncs the adapter first when a step has passed
        rows = trainer._media_rows
        seen.append((trainer.state.global_step, trainer.rollouts.synced_step, *_greedy_pair(trainer, prompt, 12)))
        trainer._media_rows = rows
        completions, logprobs = result
        assert len(completions) == len(logprobs) == len(prompt_ids)
        assert all(len(c) == len(lp) for c, lp in zip(completions, logprobs, strict=True))
        for k in (0, len(prompt_ids) - 1):  # a sample of each prompt: vLLM's log-probabilities are the policy's
            ours = _policy_logprobs(trainer, list(prompt_ids[k]), rows[k], completions[k])
            differences.append(float((ours - torch.tensor(logprobs[k])).abs().max()))
        return result

    trainer._generate_in_vllm = spy
    trainer.train()
    return trainer, seen, differences


def test_vllm_samples_with_the_policys_current_adapter(tiny_base_dir, av_data, tmp_path):
    """On every served base: the 1-D ones fed prompt_embeds, the M-RoPE ones (Qwen-VL) image items and grids."""
    out = tmp_path / "run"
    trainer, seen, differences = _train_watching_vllm(tiny_base_dir / "emoreason", av_data, out, 4)
    steps = [s for s, *_ in seen]
    assert steps == [0, 1, 2, 3], steps
    for step, synced_step, synced, policy, _ in seen:
        assert synced_step == step
        assert synced == policy, f"step {step}: vLLM {synced} != policy {policy}"
    # the negative control: the starting model (what vLLM would sample without the sync) answers differently by now
    assert seen[-1][4] != seen[-1][3], "training did not move the greedy answer: the sync is not tested"
    assert seen[0][4] == seen[0][3]  # at step 0 the fresh adapter is zero: all three agree
    print("largest |vLLM - policy| log-probability per sample:", differences)
    assert len(differences) == 8 and max(differences) < 1e-4, differences  # fp32 on CPU
    # TRL's importance-sampling correction ran on them, and logged how far they are from its own every logging step
    logged = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in h]
    assert len(logged) == 4 and all("sampling/importance_sampling_ratio/mean" in h for h in logged)
    assert all(0 <= h["sampling/sampling_logp_difference/mean"] < 1e-4 for h in logged), logged
    assert not (out / "rollouts").exists()  # the run ended: nothing of vLLM's is left in the run folder


def test_at_another_temperature_vllms_log_probabilities_are_taken_after_it(tiny_dir, av_data, tmp_path):
    trainer, seen, differences = _train_watching_vllm(tiny_dir / "emoreason", av_data, tmp_path / "run", 1,
                                                      "--temperature", 0.7)  # fmt: skip
    assert trainer.rollouts.logprobs_mode == "processed_logprobs"
    assert len(seen) == 1 and seen[0][2] == seen[0][3]
    print("largest |vLLM - policy| log-probability per sample at temperature 0.7:", differences)
    assert len(differences) == 2 and max(differences) < 1e-4, differences


def test_sigkill_then_resume_loads_the_checkpoints_adapter_into_vllm(tiny_dir, av_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    from safetensors.torch import load_file

    from train.config import GRPORecipe, parse_recipe
    from train.grpo import build_trainer

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    args = _args(tiny_dir / "emoreason", av_data, out, "--max_steps", 6, "--save_steps", 2, "--num_generations", 4,
                 "--per_device_train_batch_size", 4, "--max_completion_length", 12, "--learning_rate", 0.05,
                 "--beta", 0.0, "--rewards", "length", "--reward_weights", 1.0, "--length_max_chars", 20)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-m", "mllm.cli", "train", "grpo", *args], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while not (out / "checkpoint-2" / ".emoreason-complete").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    alive = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes of the killed run still running: {alive}"  # vLLM runs in the trainer's process
    assert not (out / "model").exists()
    export = out / "rollouts" / "language_model"
    assert export.is_dir()  # left for the resumed run
    exported_at = (export / "model.safetensors").stat().st_mtime_ns

    recipe = parse_recipe(GRPORecipe, [*args, "--resume", "true"])
    trainer, _, _, resume_from = build_trainer(recipe)
    assert (export / "model.safetensors").stat().st_mtime_ns == exported_at  # the export was reused
    seen = []
    original = trainer._generate_in_vllm

    def spy(prompt_ids):
        result = original(prompt_ids)
        if not seen:  # the first rollout of the resumed run: the checkpoint's adapter, loaded into vLLM

            def by_layer(weights):  # the converted adapter names the exported model's modules: compare from "layers."
                return {"layers." + k.split(".layers.", 1)[1]: v for k, v in weights.items()}

            converted = by_layer(load_file(trainer.rollouts.lora_path / "lora" / "adapter_model.safetensors"))
            checkpoint = by_layer(load_file(Path(resume_from) / "adapter_model.safetensors"))
            assert converted.keys() == checkpoint.keys()
            for key, value in checkpoint.items():
                torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
            rows = trainer._media_rows
            synced, policy, _ = _greedy_pair(trainer, trainer.train_dataset[0]["prompt"], 12)
            trainer._media_rows = rows
            seen.append((trainer.state.global_step, trainer.rollouts.synced_step, synced == policy))
        return result

    trainer._generate_in_vllm = spy
    assert Path(resume_from).name == "checkpoint-2"
    trainer.train(resume_from_checkpoint=resume_from)
    assert seen == [(2, 2, True)], seen
    assert trainer.state.global_step == 6 and not (out / "rollouts").exists()


def test_a_base_vllm_cannot_serve_is_refused_in_one_line(tiny_qwen3_5_dir, av_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(tiny_qwen3_5_dir / "emoreason", av_data, out, "--max_steps", 1, "--num_generations", 2,
                 "--per_device_train_batch_size", 2)  # fmt: skip
    assert main(["train", "grpo", *args]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "qwen3_5" in lines[0] and "serving" in lines[0], err
    assert "Traceback" not in err and not out.exists()  # the run folder it made is taken back


def _launch_two(model, data, out: Path, *extra) -> dict:
    """A 2-step GRPO run with vLLM rollouts under `accelerate launch` with 2 processes (gloo on CPU); its report."""
    import os
    import socket
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", port]  # fmt: skip
    args = _args(model, data, out, "--max_steps", 2, "--save_steps", 2, "--num_generations", 2,
                 "--per_device_train_batch_size", 2, "--max_completion_length", 8, *extra)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "mllm.cli", "train",
                           "grpo", *args], cwd=repo, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "model" / "train_report.json").read_text())
    assert report["processes"] == 2 and report["global_step"] == 2
    digests = report["weights_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]  # every process ends with the same weights
    assert not (out / "rollouts").exists() and not list(out.rglob("*.emoreason-tmp-*"))
    return report


def test_two_processes_under_accelerate_launch_each_roll_out_in_their_own_vllm(tiny_dir, av_data, tmp_path):
    """`accelerate launch` with 2 processes (gloo on CPU): one vLLM engine per process, every process ends with the
    same weights, and the run folder keeps nothing of vLLM's."""
    report = _launch_two(tiny_dir / "emoreason", av_data, tmp_path / "ddp")
    assert report["rollouts"]["tensor_parallel_size"] == 1
    assert any("sampling/sampling_logp_difference/mean" in h for h in report["log_history"])


def _two_prompts(out: Path, video, photo) -> Path:
    """Two samples whose prompts differ (a clip with speech, a photograph), one for each process."""
    from data_builders.cot import build_target
    from data_builders.schema import Sample, write_dataset
    from mllm.labels import label_space
    from mllm.output import question

    samples = []
    for i, (kind, media, label, aus) in enumerate((("video", video, "Happiness", ["AU6", "AU12"]),
                                                   ("image", photo, "Sadness", ["AU1", "AU4", "AU15"]))):  # fmt: skip
        sample = Sample(id=f"abaw/train/s{i}", dataset="abaw", split="train", task="expr", expression=label,
                        aus=aus, **{kind: str(media)})  # fmt: skip
        text = {"type": "text", "text": question("expr", label_space("abaw_expr"))}
        sample.prompt = [{"role": "user", "content": [{"type": kind, kind: str(media)}, text]}]
        sample.target, sample.target_grounding = build_target(sample.id, "expr", label, aus)
        samples.append(sample)
    write_dataset(samples, out, files={"build_report.json": json.dumps({"dataset": "abaw", "options": {}})})
    return out


def test_two_processes_share_one_rollout_engine_split_across_them_with_tensor_parallelism(
    tiny_dir, video_with_audio, astronaut_png, tmp_path
):
    """`vllm_tensor_parallel_size: 2` under a 2-process launch, as TRL colocates: the two processes hold one engine
    split across them (on CPU, each on its own core), each generates both processes' prompts (a clip on one, a
    photograph on the other) and keeps its own: the log-probabilities the split engine returns are the trainer's
    own for the completions it scores."""
    data = _two_prompts(tmp_path / "data", video_with_audio, astronaut_png)
    report = _launch_two(tiny_dir / "emoreason", data, tmp_path / "tp", "--vllm_tensor_parallel_size", 2)
    assert report["rollouts"]["tensor_parallel_size"] == 2  # vLLM's own account of the engine it started
    differences = [h["sampling/sampling_logp_difference/mean"] for h in report["log_history"]
                   if "sampling/sampling_logp_difference/mean" in h]  # fmt: skip
    assert differences and max(differences) < 1e-3, differences
