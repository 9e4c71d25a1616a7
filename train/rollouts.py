"""GRPO rollouts in vLLM (`use_vllm: true`): the policy samples in a vLLM engine in the trainer's own process, fed
our embeddings, with its current LoRA.

    emoreason train grpo --config train/recipes/grpo_tiny_cpu.yaml --model runs/sft --use_vllm true

TRL's vLLM paths send token ids and images only, so they cannot carry our audio, landmarks and face attention.
Here, for each generation batch:

- the prompts' embeddings come from the seam (`build_inputs`) of the trainer's own model, so the face attention
  and audio branch sample as they are at that step; they reach vLLM exactly as they reach the serving engine
  (`serve.engine.encode_prompts`: `prompt_embeds`, or image items with their grids for the M-RoPE bases);
- the language model vLLM runs is the starting model's, exported once per run into `OUTPUT_DIR/rollouts/` (keyed
  by content, so a resumed run reuses it); GRPO trains a LoRA on it and, every `vllm_sync_steps` optimiser steps,
  the policy's adapter is saved, converted as `emoreason export` converts it, and loaded under a new adapter id
  (the previous one unloaded and its folder removed);
- every sampled token's log-probability comes back, as the trainer computes its own (log_softmax of the logits over
  the temperature: vLLM's raw log-probabilities at temperature 1, its processed ones otherwise), so TRL's
  importance-sampling correction measures the two engines' difference, and the mean absolute difference between
  vLLM's and the trainer's log-probabilities is logged every logging step. At temperature 1 a top_p / top_k
  truncation is not counted as a difference: sampling means what it means with transformers `generate`, where
  TRL takes the samples as the policy's.

With `vllm_tensor_parallel_size: N` under a launcher, each N processes share one engine split across them (as TRL
colocates): each generates the group's prompts, with per-request seeds equal across the group, and keeps its own.

`OUTPUT_DIR/rollouts/` is removed when the run ends; a killed run leaves it for `--resume` to reuse.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROLLOUTS = "rollouts"


def rollout_dtype(recipe) -> str:
    """vLLM's dtype for the rollouts: the trainer's (bf16 / fp16 when it trains in them, else float32)."""
    return "bfloat16" if recipe.bf16 else "float16" if recipe.fp16 else "float32"


def export_rollout_model(model, tokenizer, recipe, model_dir: str | Path) -> Path:
    """The starting model's language model as vLLM loads it, in `OUTPUT_DIR/rollouts/language_model` (written
    atomically, reused while the starting model is unchanged). `model` is the composed model before GRPO's
    adapter wraps it (an earlier stage's adapter merged), exactly the weights the policy's LoRA is trained on."""
    import time

    from mllm.export import content_key, export_is_current, export_language_model, write_export

    final = Path(recipe.output_dir).expanduser().resolve() / ROLLOUTS / "language_model"
    key = content_key(model_dir, salt=f"rollouts {rollout_dtype(recipe)}")
    if int(os.environ.get("RANK") or 0) == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        write_export(final, key, lambda tmp: export_language_model(model, tokenizer, tmp))
        return final
    deadline = time.monotonic() + 1800  # under a launcher, the main process writes it and the others wait
    while not export_is_current(final, key):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{final}: the main process did not export the rollout model within 30 minutes")
        time.sleep(0.5)
    return final


class VLLMRollouts:
    """One vLLM engine (`vllm.LLM`) for one training process: the exported language model, LoRA slots for the
    policy's adapter, prompt embeddings (or M-RoPE image items) as inputs."""

    def __init__(self, lm_dir: Path, recipe, composed, accelerator=None):
        import torch
        from vllm import LLM

        self.lm_dir = Path(lm_dir)
        self.folder = self.lm_dir.parent
        self.dtype = rollout_dtype(recipe)
        self.mm_embeds = composed.adapter.positions == "mrope"
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.lora_id = 0
        self.lora_path: Path | None = None
        self.synced_step: int | None = None
        self.suppress = {composed.config.image_token_id: -100.0, composed.config.audio_token_id: -100.0}
        # The log-probabilities the trainer computes: log_softmax(logits / temperature), over the whole vocabulary.
        # At temperature 1 those are vLLM's raw ones, exactly; otherwise its processed ones (after the temperature),
        # which also renormalise over what top_p / top_k / min_p and the suppressed placeholders leave.
        self.logprobs_mode = "raw_logprobs" if recipe.temperature == 1.0 else "processed_logprobs"
        cpu = not torch.cuda.is_available()
        # The engine runs in this process (no engine-core child): a training process killed with SIGKILL leaves no
        # vLLM process behind, and the trainer waits on generation anyway.
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(recipe.vllm_kv_cache_gib)
            if (os.cpu_count() or 1) <= 4:
                env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        eager = recipe.vllm_enforce_eager if recipe.vllm_enforce_eager is not None else cpu
        text = composed.adapter.text_config(composed.base)
        max_len = recipe.vllm_max_model_length or min(4096, getattr(text, "max_position_embeddings", 4096))
        inputs = (
            {"enable_mm_embeds": True, "limit_mm_per_prompt": {"image": 64}}
            if self.mm_embeds
            else {"enable_prompt_embeds": True}
        )
        extra = {}
        self.external_launcher = accelerator is not None and accelerator.num_processes > 1
        self.tp = recipe.vllm_tensor_parallel_size
        self.tp_group = None
        self.seed, self.calls = recipe.seed, 0
        if self.tp > 1:  # the recipe checked that it divides the launched processes
            processes = accelerator.num_processes
            # As TRL colocates: processes [0..tp), [tp..2tp), ... each share one engine split across them; every
            # process in a group generates the group's prompts (see `generate`) and keeps its own share.
            self.tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(i, i + self.tp)) for i in range(0, processes, self.tp)]
            )
            extra["tensor_parallel_size"] = self.tp
            if cpu and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
                from serve.engine import cpu_core_groups

                # one group of this machine's cores for each of its processes
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_core_groups(
                    int(os.environ.get("LOCAL_WORLD_SIZE") or processes)
                )
        if self.external_launcher:
            # One engine per process, as TRL colocates: vLLM joins the launcher's processes, starting none.
            extra["distributed_executor_backend"] = "external_launcher"
            os.environ["RANK"] = str(accelerator.process_index)
            os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
            os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
        if not cpu:
            extra["gpu_memory_utilization"] = recipe.vllm_gpu_memory_utilization
        previous = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # for this engine only: a serving engine started later in the process has its own
        try:
            self.llm = self._start(LLM, inputs, eager, max_len, recipe, extra)
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.max_model_len = max_len
        # What vLLM itself says it started (for the run's report).
        parallel = self.llm.llm_engine.vllm_config.parallel_config
        self.report = {"engine": "vllm", "tensor_parallel_size": parallel.tensor_parallel_size,
                       "logprobs_mode": self.logprobs_mode}  # fmt: skip

    def _start(self, LLM, inputs, eager, max_len, recipe, extra):  # noqa: N803 (the class, passed in)
        from serve.engine import LORA_SLOTS

        return LLM(
            model=str(self.lm_dir),
            **inputs,
            dtype=self.dtype,
            enforce_eager=eager,
            max_model_len=max_len,
            max_num_seqs=max(8, recipe.per_device_train_batch_size * recipe.steps_per_generation),
            seed=recipe.seed + self.rank // self.tp,  # a tensor-parallel group samples alike
            enable_lora=True,
            max_lora_rank=next((r for r in LORA_SLOTS if r >= recipe.lora_r), recipe.lora_r),
            max_loras=1,
            logprobs_mode=self.logprobs_mode,
            **extra,
        )

    # The policy's adapter ----------------------------------------------------------------------------------------

    def sync(self, peft_model, composed, step: int) -> Path:
        """Save the policy's current adapter, convert it to the exported language model's names and load it into
        vLLM under a new id; the previous adapter is unloaded and its folder removed."""
        from vllm.lora.request import LoRARequest

        from mllm.export import convert_lora_adapter
        from mllm.outputs import atomic_dir

        saved = self.folder / f"policy-{self.rank}-step{step}"
        with atomic_dir(saved) as tmp:
            peft_model.save_pretrained(str(tmp / "peft"))
            convert_lora_adapter(tmp / "peft", tmp / "lora", composed, self.lm_dir)
            shutil.rmtree(tmp / "peft")
        old_id, old_path = self.lora_id, self.lora_path
        self.lora_id += 1
        self.lora_path = saved
        self.request = LoRARequest(f"policy-step{step}", self.lora_id, str(saved / "lora"))
        self.llm.llm_engine.add_lora(self.request)
        if old_id:
            self.llm.llm_engine.remove_lora(old_id)
        if old_path is not None and old_path != saved:
            shutil.rmtree(old_path, ignore_errors=True)
        self.synced_step = step
        return saved

    # Sampling ------------------------------------------------------------------------------------------------------

    def sampling_params(self, args, generation_kwargs: dict | None = None, **overrides):
        """TRL's sampling settings as vLLM's: temperature, top_p, top_k, min_p, repetition penalty, the completion
        length; the placeholder tokens suppressed (a sampled one would have no media to fill it)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        settings = {
            "n": 1,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k if args.top_k is not None else 0,
            "min_p": args.min_p or 0.0,
            "repetition_penalty": args.repetition_penalty,
            "max_tokens": args.max_completion_length,
            "logprobs": 0,
            "logit_bias": dict(self.suppress),
            **(generation_kwargs or {}),
            **overrides,
        }
        if settings["top_k"] in (None, -1):
            settings["top_k"] = 0
        if args.vllm_structured_outputs_regex:
            settings["structured_outputs"] = StructuredOutputsParams(regex=args.vllm_structured_outputs_regex)
        return SamplingParams(**settings)

    def generate(self, prompts: list, params, lora: bool = True) -> tuple[list[list[int]], list[list[float]]]:
        """Completion token ids and each sampled token's log-probability, one completion per prompt (vLLM's
        inputs: `serve.engine.Prompt.inputs`)."""
        import math

        own = len(prompts)
        if self.tp_group is not None:
            import torch

            gathered = [None] * self.tp
            torch.distributed.all_gather_object(gathered, prompts, group=self.tp_group)
            before = sum(len(part) for part in gathered[: torch.distributed.get_rank(group=self.tp_group)])
            prompts = [p for part in gathered for p in part]
        for p in prompts:
            if p.tokens + params.max_tokens > self.max_model_len:
                raise ValueError(
                    f"a prompt of {p.tokens} tokens and max_completion_length {params.max_tokens} exceed "
                    f"vllm_max_model_length {self.max_model_len}"
                )
        if self.tp_group is not None:
            # Every process of the group runs the same batch and must sample the same tokens (each feeds its own to
            # the next step's shared computation); the global random state differs between training processes, so
            # each request gets its own seed, the same on every process of the group.
            self.calls += 1
            base = self.seed * 1_000_003 + self.calls * 10_007
            params = [params.clone() for _ in prompts]
            for i, p in enumerate(params):
                p.seed = base + i
        outputs = self.llm.generate(
            [p.inputs for p in prompts],
            sampling_params=params,
            lora_request=self.request if (lora and self.lora_path is not None) else None,
            use_tqdm=False,
        )
        ids, logprobs = [], []
        for out in outputs:
            piece = out.outputs[0]
            ids.append(list(piece.token_ids))
            lps = [lp[t].logprob for lp, t in zip(piece.logprobs or [], piece.token_ids, strict=True)]
            logprobs.append([float("nan") if math.isnan(x) else float(x) for x in lps])
        if self.tp_group is not None:
            ids, logprobs = ids[before : before + own], logprobs[before : before + own]
        return ids, logprobs

    def close(self, remove: bool = True) -> None:
        """Stop the engine; with `remove`, the run is over: `OUTPUT_DIR/rollouts/` goes (only ours is in it)."""
        # Under a launcher, vLLM's shutdown (also run when the engine is collected) takes down torch.distributed's
        # process group, which the run still needs for its final gather: the engine then ends with the process.
        if not self.external_launcher:
            llm, self.llm = getattr(self, "llm", None), None
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
        if remove and self.rank == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
