"""The one serving engine: the endpoint, the demo, `emoreason analyze` and batch evaluation all answer through it.

    engine = Engine("runs/sft/model", adapters={"sft2": "runs/sft2/model"})
    await engine.start()
    result = await engine.complete(messages, task="expr")          # or: async for delta in engine.stream(...)
    await engine.shutdown()

Our processor and the composed model's encoders (vision tower, face attention, audio branch) run in this process,
in worker threads so the caller's event loop never blocks. Each request's media are decoded and its faces tracked
in a pool of `render_workers` threads, side by side, so a heavy request does not hold a light one behind it; the
encoders then run the requests that are ready as one batch. A request given up by its caller (timeout, client gone)
stops at its next media part or frame. vLLM's `AsyncLLM` runs the checkpoint's exported language model fed
`prompt_embeds` (ARCHITECTURE.md, decisions 2 and 9), or, for the M-RoPE bases (Qwen-VL), the base itself fed the
token ids with our embeddings as image items and their grids, so vLLM computes the base's 3-D positions as training
does; every LoRA adapter is loaded and chosen per request by model name. When a request names a task, the
completion is constrained to that task's grammar (vLLM structured outputs), so it always parses.

An adapter is a trained EmoReason folder (training's output: its LoRA, and new modules that may differ from the
main model's) or a PEFT LoRA adapter folder for the same base. A folder whose new modules differ gets its own
copy of the encoders in memory; its language model must be the main model's, since vLLM serves one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from mllm.output import TASKS

# vLLM's LoRA slot sizes: an adapter of rank r is served in the smallest slot >= r.
LORA_SLOTS = (8, 16, 32, 64, 128, 256, 320, 512)


class RequestError(ValueError):
    """A request the engine refuses (bad media, unknown model or task, too long): the caller's fault, a 4xx."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None, status: int = 400):
        super().__init__(message)
        self.code, self.param, self.status = code, param, status


@dataclass
class Delta:
    """A piece of a completion as it is generated; the last one has `finish_reason` set."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None  # each sampled token's, when the request asked for logprobs
    token_logprobs: list[dict] | None = None  # the same as OpenAI shapes them, with the top alternatives


def _openai_logprobs(position: dict, token_id: int, top: int) -> dict:
    """One token's entry of OpenAI's `logprobs.content` from vLLM's {token id: Logprob} at that position."""

    def item(lp) -> dict:
        text = lp.decoded_token or ""
        return {"token": text, "logprob": float(lp.logprob), "bytes": list(text.encode("utf-8"))}

    ranked = sorted(position.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)
    return {**item(position[token_id]), "top_logprobs": [item(lp) for lp in ranked[:top]]}


@dataclass
class Prompt:
    """One request's prompt, as vLLM takes it: `inputs` is `{"prompt_embeds": E}` for bases with 1-D positions, or
    the token ids with our media embeddings as image items and their grids for the M-RoPE bases
    (`mllm.model.bases.Qwen2_5_VLAdapter.vllm_prompt`); `tokens` is its length in the language model's tokens."""

    inputs: dict
    tokens: int


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    task: str | None
    parsed: dict = field(default_factory=dict)


@dataclass
class _Served:
    """A name requests can use: which encoders build its embeddings and which LoRA (if any) vLLM applies."""

    name: str
    encoder: str
    lora_path: Path | None
    lora_id: int | None
    label_space: str  # the expression labels its answers are constrained to and parsed in


def cpu_dtype() -> str:
    """bfloat16 where this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), else float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def _new_module_digest(model) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if any(p is q for q in model.new_module_parameters()):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _same_language_model(a, b) -> bool:
    import torch

    sa = {n: p for n, p in a.named_parameters() if ".language_model." in n or n.startswith("base.lm_head")}
    sb = {n: p for n, p in b.named_parameters() if ".language_model." in n or n.startswith("base.lm_head")}
    return bool(sa) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def parsed_result(text: str, task: str | None, label_space: str) -> dict:
    """The parsed answer for the API's `emoreason` field: task, ok, and the task's fields, or the parse error.
    Without a named task, the first task whose grammar the completion follows (expr first)."""
    from mllm.output import parse
    from mllm.scoring import cited_aus

    results = [(t, parse(text, t, label_space)) for t in ([task] if task else TASKS)]
    t, result = next(((t, r) for t, r in results if r.ok), results[0])
    if not result.ok:
        return {"task": task, "ok": False, "error": result.error, "message": result.message}
    out = {"task": t, "ok": True, "think": result.think, "cited_aus": list(cited_aus(result.think))}
    if t == "expr":
        out["label"] = result.answer
    elif t == "au":
        out["aus"] = list(result.answer)
    elif t == "va":
        out["valence"], out["arousal"] = result.answer
    else:
        out["ambivalence_hesitancy"] = "present" if result.answer else "absent"
    return out


def encode_prompts(model, ids: list, media: dict, pad_token_id: int, dtype: str) -> list[Prompt]:
    """Each conversation's `Prompt` for vLLM: its token ids (1-D tensors, unpadded) run through the composed model's
    encoders and `build_inputs` as one left-padded batch with `media` (`concat_media` of their rows), in vLLM's
    `dtype`. The engine and GRPO's vLLM rollouts (train/rollouts.py) build their prompts here."""
    import torch

    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for k, x in enumerate(ids):  # left padding, as the processor pads
        input_ids[k, longest - len(x) :] = torch.as_tensor(x)
        mask[k, longest - len(x) :] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        embeds, _, extras = model.build_inputs(input_ids.to(device), **media)
    extras = model.extras_per_sequence(input_ids, extras)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
    prompts = []
    for k, x in enumerate(ids):
        row = embeds[k][mask[k].bool().to(embeds.device)].to("cpu", torch_dtype).clone()
        extra = None if extras[k] is None else extras[k].to("cpu", torch_dtype)
        prompts.append(Prompt(model.vllm_inputs(torch.as_tensor(x), row, extra), len(x)))
    return prompts


def served_name(model_dir: str | Path) -> str:
    """The main model's name in requests: its folder's, or for a training run's OUTPUT_DIR/model, the run's."""
    folder = Path(str(model_dir)).absolute()
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name


def add_parallel_arguments(parser) -> None:
    """`--tensor-parallel-size` and `--data-parallel-size`, for every command that starts the engine."""
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="split the language model over N GPUs (vLLM's tensor parallelism; on CPU, over N groups "
                             "of cores; default 1)")  # fmt: skip
    copies = "N copies of the model on their own GPUs (vLLM's data parallelism; GPU only; default 1)"
    parser.add_argument("--data-parallel-size", type=int, default=1, metavar="N", help=copies)


def parallel_arguments(args) -> dict:
    return {"tensor_parallel_size": getattr(args, "tensor_parallel_size", 1),
            "data_parallel_size": getattr(args, "data_parallel_size", 1)}  # fmt: skip


def check_parallel(tensor: int, data: int, cpu: bool) -> dict:
    """vLLM's parallel settings, checked before anything loads. The encoders (vision, audio, face attention) stay on
    the first device; vLLM splits the language model. On CPU, tensor parallelism runs one vLLM worker per group of
    cores: unless the operator set `VLLM_CPU_OMP_THREADS_BIND`, the cores this process may use are split into
    `tensor` equal groups (vLLM's own binding wants a NUMA node per worker, which small machines lack)."""
    for flag, value in (("--tensor-parallel-size", tensor), ("--data-parallel-size", data)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag}: a whole number of at least 1, got {value!r}")
    if cpu and data > 1:
        raise ValueError("--data-parallel-size: GPU only here (vLLM's CPU data parallelism was not tried in this "
                         "project); on CPU use --tensor-parallel-size, or run one server per machine")  # fmt: skip
    if cpu and tensor > 1:
        cores = sorted(os.sched_getaffinity(0))
        if tensor > len(cores):
            raise ValueError(f"--tensor-parallel-size {tensor}: this process may use {len(cores)} cores; on CPU each "
                             "part needs at least one")  # fmt: skip
        if not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_core_groups(tensor)
    return {"tensor_parallel_size": tensor, "data_parallel_size": data}


def cpu_core_groups(n: int) -> str:
    """The cores this process may use split into `n` equal groups, written as `VLLM_CPU_OMP_THREADS_BIND` takes
    them ("0,1|2,3"; with more groups than cores, groups share cores round the list). vLLM's automatic binding wants a
    NUMA node per worker, which small machines lack."""
    cores = sorted(os.sched_getaffinity(0))
    size = max(1, len(cores) // n)
    starts = [(i * size) % len(cores) for i in range(n)]
    return "|".join(",".join(map(str, cores[start : start + size])) for start in starts)


class Engine:
    """Encoders here, the language model in vLLM. Construct (loads and exports; seconds to minutes), `await
    start()` (starts vLLM), then `stream` / `complete` from any number of concurrent tasks on one event loop."""

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        *,
        name: str | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_model_len: int = 4096,
        max_num_seqs: int = 64,
        encoder_batch: int = 16,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        render_workers: int = 4,
        face_cache: bool = True,
        status=None,
        max_mm_items: int = 64,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
    ):
        from mllm.checkpoints import check_checkpoint, resolve_checkpoint
        from mllm.export import check_servable, load_model, served_model
        from mllm.processor import EmoReasonProcessor

        self.status = status or (lambda text: None)  # one line per start-up phase (serve.startup.StartupLog.phase)
        self.model_dir = resolve_checkpoint(model_dir)
        check_checkpoint(self.model_dir, processor=True)
        check_servable(self.model_dir)
        for adapter_name, path in (adapters or {}).items():  # every folder checked before any slow load
            if not adapter_name or "=" in adapter_name:
                raise ValueError(f"adapter name {adapter_name!r}: give NAME=PATH with a non-empty NAME")
            if not Path(path).is_dir():
                raise FileNotFoundError(f"adapter {adapter_name}: {path}: no such folder")
        self.name = name or served_name(self.model_dir)
        self.encoder_batch = max(1, encoder_batch)
        self.max_model_len = max_model_len
        self.seed = seed
        import torch

        cpu = not torch.cuda.is_available()
        # On GPU, vLLM's defaults. On CPU, compiled graphs, in bf16 where the CPU computes in bf16 natively, else in
        # fp32: without AVX512-BF16 or AMX, bf16 is emulated, and a request with a 666-token multimodal prompt took
        # 4.5 s in bf16 against 1.6 s in fp32 on the mid-size model (bench/serve.py --systems a a16; AVX2-only EPYC).
        self.dtype = dtype or (cpu_dtype() if cpu else "auto")
        self.enforce_eager = bool(enforce_eager) if enforce_eager is not None else False
        self.max_num_seqs = max_num_seqs
        self.max_mm_items = max_mm_items
        self.parallel = check_parallel(tensor_parallel_size, data_parallel_size, cpu)
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib or 2))
            if (os.cpu_count() or 1) <= 4:
                # vLLM keeps one core for the frontend by default; on a small machine the language model's prefill
                # is the bottleneck, and giving it every core served 1.5x the requests per second with the encoders
                # sharing (0.84 against 0.55 at 16 clients, bench/serve.py, 2 cores).
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

        self.status(f"loading the model ({model_dir})")
        main = load_model(self.model_dir, adapter="ignore").eval()
        # face_cache False: a server keeps nothing of a request (landmarks are biometric data) unless told to.
        self.processor = EmoReasonProcessor.from_pretrained(self.model_dir, face_cache=face_cache)
        self.render_workers = max(1, render_workers)
        self.label_space = main.config.label_space

        def exported():
            self.status("exporting its language model for vLLM (once per model: kept while the weights are unchanged)")
            return main, self.processor.tokenizer

        self.lm_dir, own_lora = served_model(self.model_dir, exported)
        # M-RoPE bases (Qwen-VL) are served as the base itself, fed our embeddings as image items with their grids.
        self.mm_embeds = main.adapter.positions == "mrope"
        self.encoders = {_new_module_digest(main): main}
        main_key = next(iter(self.encoders))
        ids = itertools.count(1)
        self.served: dict[str, _Served] = {
            self.name: _Served(self.name, main_key, own_lora, next(ids) if own_lora else None, self.label_space)
        }
        for adapter_name, path in (adapters or {}).items():
            if adapter_name in self.served:
                raise ValueError(f"adapter name {adapter_name!r} is taken (the main model is {self.name!r})")
            encoder, lora, space = self._load_adapter(adapter_name, Path(path), main)
            self.served[adapter_name] = _Served(adapter_name, encoder, lora, next(ids) if lora else None, space)
        self.llm = None
        self._pending: list = []
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._render_pool = None
        self.stats = {"encoded": 0, "encoder_batches": 0, "largest_encoder_batch": 0, "running": 0, "rendering": 0}

    # Loading ------------------------------------------------------------------------------------------------------

    def _load_adapter(self, name: str, path: Path, main) -> tuple[str, Path | None, str]:
        from mllm.export import (
            check_adapter,
            content_key,
            convert_lora_adapter,
            load_model,
            served_folder,
            served_lora,
            write_export,
        )

        if (path / "config.json").is_file():  # a trained EmoReason folder: its own new modules and LoRA
            from mllm.checkpoints import check_checkpoint

            check_checkpoint(path)
            other = load_model(path, adapter="ignore").eval()
            if not _same_language_model(main, other):
                raise ValueError(
                    f"adapter {name}: {path} has a different language model from {self.model_dir}; "
                    "one server serves one language model (start a second server for it)"
                )
            key = _new_module_digest(other)
            self.encoders.setdefault(key, other)
            lora = served_lora(path, self.lm_dir)
            if lora is None:
                raise ValueError(f"adapter {name}: {path} has no LoRA adapter (adapter/adapter_config.json)")
            return key, lora, other.config.label_space
        if not (path / "adapter_config.json").is_file():
            raise ValueError(f"adapter {name}: {path} is neither an EmoReason folder nor a PEFT adapter folder")
        check_adapter(path)
        key = content_key(path, salt=f"{content_key(self.model_dir)} {self.lm_dir.resolve()}")
        final = served_folder(self.model_dir, key) / "adapters" / key[:32]
        write_export(final, key, lambda tmp: convert_lora_adapter(path, tmp, main, self.lm_dir))
        return next(iter(self.encoders)), final, self.label_space

    async def start(self) -> None:
        """Start vLLM (20-60 s on CPU) and the encoder batcher, on the running event loop."""
        import json

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        lora = {}
        ranks = [json.loads((s.lora_path / "adapter_config.json").read_text())["r"] for s in self.served.values()
                 if s.lora_path is not None]  # fmt: skip
        if ranks:
            slot = next((r for r in LORA_SLOTS if r >= max(ranks)), max(ranks))
            lora = {"enable_lora": True, "max_lora_rank": slot, "max_loras": len(ranks)}
        # The 1-D bases take prompt_embeds; the M-RoPE bases take image items (a request's images, video frames
        # and audio clips, each one item): at most max_frames frames a part, across the parts a request may hold.
        inputs = (
            {"enable_mm_embeds": True, "limit_mm_per_prompt": {"image": self.max_mm_items}}
            if self.mm_embeds
            else {"enable_prompt_embeds": True}
        )
        args = AsyncEngineArgs(
            model=str(self.lm_dir),
            **inputs,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            seed=self.seed,
            **self.parallel,
            **lora,
        )
        mode = "without compiled graphs" if self.enforce_eager else "compiling its graphs: a minute or more on CPU"
        self.status(f"starting vLLM ({mode})")
        self.llm = AsyncLLM.from_engine_args(args)
        self._start_encoders()

    def _start_encoders(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._render_pool = ThreadPoolExecutor(self.render_workers, thread_name_prefix="emoreason-render")
        self._wake = asyncio.Event()
        self._batcher = asyncio.create_task(self._encode_loop())

    async def shutdown(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            self._batcher = None
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False, cancel_futures=True)
            self._render_pool = None
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    # Encoding, batched across concurrent requests -------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self.served)

    def _served(self, model: str | None) -> _Served:
        if model is None or model == self.name:
            return self.served[self.name]
        if model not in self.served:
            raise RequestError(
                f"model {model!r} is not served here; available: {', '.join(self.served)}",
                code="model_not_found",
                param="model",
                status=404,
            )
        return self.served[model]

    async def embed(self, messages: list[dict], model: str | None = None, limits: dict | None = None, access=None):
        """The prompt of one conversation (a `Prompt`: its embeddings), from the encoders `model` uses. `access`:
        what its media may name and cost (`mllm.parts.MediaAccess`; default: anything, for the user's own
        commands). Cancelling the caller (a timeout, a client that left) stops the work at its next part or frame."""
        if self._wake is None:
            raise RuntimeError("the engine is not started: await engine.start() first")
        served = self._served(model)
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._render_pool, self._render, messages, limits, access, stop.is_set)
            if isinstance(rows, RequestError):
                raise rows
            future = loop.create_future()
            self._pending.append((served.encoder, rows, future))
            self._wake.set()
            return await future
        finally:
            stop.set()  # finished, failed or given up: a render still running stops at its next part or frame

    async def embed_rendered(self, rows: dict, model: str | None = None) -> Prompt:
        """The prompt of one conversation the caller rendered itself (`EmoReasonProcessor.window`: a live
        session's frames, with the landmarks its own tracking found), batched with the other requests' encoding."""
        if self._wake is None:
            raise RuntimeError("the engine is not started: await engine.start() first")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((self._served(model).encoder, rows, future))
        self._wake.set()
        return await future

    def encode_now(self, conversations: list[list[dict]], model: str | None = None, limits: dict | None = None):
        """Each conversation's `Prompt`, or the `RequestError` refusing it, computed in the calling thread
        in batches (no started engine needed): a one-shot caller checks every input before vLLM starts."""
        encoder = self._served(model).encoder
        out = []
        for i in range(0, len(conversations), self.encoder_batch):
            chunk = [self._render(messages, limits) for messages in conversations[i : i + self.encoder_batch]]
            out += self._encode_batch([(encoder, rows, None) for rows in chunk])
        return out

    async def _encode_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self.encoder_batch], self._pending[self.encoder_batch :]
                batch = [item for item in batch if not item[2].done()]  # callers that gave up
                if not batch:
                    continue
                try:
                    results = await asyncio.to_thread(self._encode_batch, batch)
                except Exception as exc:  # a failure of the batch as a whole reaches every caller in it
                    results = [exc] * len(batch)
                for (*_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def _render(self, messages: list[dict], limits: dict | None, access=None, should_stop=None):
        """One conversation through the processor (media decoded, faces tracked), or the `RequestError` refusing
        it: one bad request fails alone."""
        from mllm.media import MediaError
        from mllm.parts import UNRESTRICTED, MediaNotAllowedError
        from mllm.processor import ProcessorInputError

        self.stats["rendering"] += 1
        try:
            return self.processor([messages], add_generation_prompt=True, limits=limits,
                                  access=access or UNRESTRICTED, should_stop=should_stop)  # fmt: skip
        except MediaNotAllowedError as exc:
            return RequestError(f"{exc}", code="media_not_allowed", status=403)
        except (MediaError, ProcessorInputError, ValueError) as exc:
            return RequestError(f"{exc}", code="invalid_media" if isinstance(exc, MediaError) else None)
        finally:
            self.stats["rendering"] -= 1

    def _encode_batch(self, batch: list) -> list:
        """Each encoder set's rendered requests through `build_inputs_embeds` as one batch; a refused render
        (`RequestError`) is passed through."""

        from mllm.processor import concat_media

        results: list = [None] * len(batch)
        groups: dict[str, list[tuple[int, dict]]] = {}
        for i, (encoder, rows, _) in enumerate(batch):
            if isinstance(rows, RequestError):
                results[i] = rows
                continue
            groups.setdefault(encoder, []).append((i, rows))
        for encoder, items in groups.items():
            model = self.encoders[encoder]
            ids = [rows["input_ids"][0][rows["attention_mask"][0].bool()] for _, rows in items]
            longest = max(len(x) for x in ids)
            if longest >= self.max_model_len:
                for (i, _), x in zip(items, ids, strict=True):
                    if len(x) >= self.max_model_len:
                        results[i] = RequestError(
                            f"the prompt is {len(x)} tokens; this server takes at most {self.max_model_len - 1}",
                            code="context_length_exceeded",
                        )
                keep = [k for k, x in enumerate(ids) if len(x) < self.max_model_len]
                items, ids = [items[k] for k in keep], [ids[k] for k in keep]
                if not items:
                    continue
                longest = max(len(x) for x in ids)
            media = concat_media([rows for _, rows in items])
            prompts = encode_prompts(model, ids, media, self.processor.tokenizer.pad_token_id, self.dtype)
            for (i, _), prompt in zip(items, prompts, strict=True):
                results[i] = prompt
            self.stats["encoded"] += len(items)
        self.stats["encoder_batches"] += 1
        self.stats["largest_encoder_batch"] = max(self.stats["largest_encoder_batch"], len(batch))
        return results

    # Generation ---------------------------------------------------------------------------------------------------

    def constrain(self, params, task: str | None, model: str | None = None):
        """`params` (vLLM SamplingParams) made to stream deltas and, when a task is named, to follow that task's
        grammar (in the label space of the served `model`): the think then takes at most the characters that leave
        room for the answer (`think_budget`)."""
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        from mllm.output import answer_regex, think_budget

        if task is not None and task not in TASKS:
            raise RequestError(f"unknown task {task!r}; valid: {', '.join(TASKS)}", param="task")
        params.output_kind = RequestOutputKind.DELTA
        if task is not None:
            space = self._served(model).label_space
            try:
                budget = think_budget(task, space, params.max_tokens or 0)
            except ValueError as exc:
                raise RequestError(str(exc), param="max_tokens") from None
            regex = answer_regex(task, space, max_think_chars=budget)
            params.structured_outputs = StructuredOutputsParams(regex=regex)
        return params

    def sampling_params(self, task: str | None = None, max_tokens: int = 256, model: str | None = None, **sampling):
        """vLLM SamplingParams for a request: greedy unless told otherwise, constrained when a task is named."""
        from vllm import SamplingParams

        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
        sampling.setdefault("temperature", 0.0)
        from vllm.exceptions import VLLMValidationError

        try:
            params = SamplingParams(max_tokens=max_tokens, **{k: v for k, v in sampling.items() if v is not None})
        except (ValueError, TypeError, VLLMValidationError) as exc:
            raise RequestError(f"sampling parameters: {exc}") from None
        return self.constrain(params, task, model)

    @property
    def vocab_size(self) -> int:
        """Token ids a request may name (logit_bias): the served language model's vocabulary."""
        return len(self.processor.tokenizer)

    def served_label_space(self, model: str | None = None) -> str:
        """The expression label space the served `model`'s answers are constrained to."""
        return self._served(model).label_space

    def served_name(self, model: str | None) -> str:
        """The served name a request's `model` picks (the main model when none is named)."""
        return self._served(model).name

    def with_question(self, messages: list, task: str | None, model: str | None = None) -> list:
        """`messages` with the task's own question added to the last user turn when a task is named and no user
        turn asks anything in words (media alone): a request need not repeat the instruction."""
        from mllm.labels import label_space
        from mllm.output import question

        if task not in TASKS or not isinstance(messages, list):
            return messages
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        asked = any(
            (isinstance(m.get("content"), str) and m["content"].strip())
            or (isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "text"
                                                           and str(p.get("text", "")).strip() for p in m["content"]))
            for m in users
        )  # fmt: skip
        if asked or not users or not isinstance(users[-1].get("content"), list):
            return messages
        labels = label_space(self._served(model).label_space) if task == "expr" else ()
        last = users[-1]
        extended = {**last, "content": [*last["content"], {"type": "text", "text": question(task, labels)}]}
        return [extended if m is last else m for m in messages]

    def parse(self, text: str, task: str | None, model: str | None = None) -> dict:
        return parsed_result(text, task, self._served(model).label_space)

    async def stream(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        task: str | None = None,
        params=None,
        limits: dict | None = None,
        request_id: str | None = None,
        prompt_tokens: list | None = None,
        embeds=None,
    ) -> AsyncIterator[Delta]:
        """The completion as it is generated. Stopping the iteration (a client that left) aborts the request.
        `embeds`: the prompt when the caller computed it already (`embed`)."""
        from vllm.lora.request import LoRARequest

        served = self._served(model)
        params = params if params is not None else self.sampling_params(task, model=model)
        if embeds is None:
            embeds = await self.embed(messages, model, limits)
        if prompt_tokens is not None:
            prompt_tokens.append(embeds.tokens)
        room = self.max_model_len - embeds.tokens
        if params.max_tokens > room:
            params.max_tokens = room  # the context bounds the completion; vLLM would refuse the request
        lora = LoRARequest(served.name, served.lora_id, str(served.lora_path)) if served.lora_path else None
        request_id = request_id or uuid.uuid4().hex
        self.stats["running"] += 1
        try:
            async for out in self.llm.generate(embeds.inputs, params, request_id, lora_request=lora):
                piece = out.outputs[0]
                logprobs = entries = None
                if piece.logprobs is not None:
                    pairs = list(zip(piece.logprobs, piece.token_ids, strict=True))
                    logprobs = [float(lp[t].logprob) for lp, t in pairs]
                    entries = [_openai_logprobs(lp, t, params.logprobs or 0) for lp, t in pairs]
                finish = piece.finish_reason if out.finished else None
                yield Delta(piece.text, list(piece.token_ids), finish, logprobs, entries)
        finally:
            self.stats["running"] -= 1

    async def complete(self, messages: list[dict], *, task: str | None = None, **kwargs) -> Completion:
        text, tokens, finish, prompt = [], [], None, []
        async for delta in self.stream(messages, task=task, prompt_tokens=prompt, **kwargs):
            text.append(delta.text)
            tokens += delta.token_ids
            finish = delta.finish_reason or finish
        joined = "".join(text)
        model = kwargs.get("model")
        return Completion(joined, tokens, finish, prompt[0], task, self.parse(joined, task, model))
