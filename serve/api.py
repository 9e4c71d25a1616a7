"""The OpenAI-compatible endpoint over the engine: what the official `openai` client talks to.

    emoreason serve --model runs/sft/model [--adapter sft2=runs/sft2/model] [--port 8000] [--api-key KEY]

    POST /v1/chat/completions   (stream: true answers as server-sent events)
    GET  /v1/models, /health, /metrics (Prometheus)

A request may name the task in an extra body field (`extra_body={"task": "expr"}` with the `openai` client): the
answer is then constrained to that task's grammar. Every response carries the parsed result in an extra field,
`emoreason` (on the last chunk when streaming). Requests are parsed by vLLM's pydantic `ChatCompletionRequest`
(its sampling fields pass through to vLLM unchanged) and answered with the `openai` package's types.

Refusals are 4xx with OpenAI's error body and never stop the server: a body over `--max-body-mb` (read to the end,
up to a bound, so the client sees the 413), a wrong or missing API key (compared in constant time), a file of the
server's named under any key (a content part, a video's `frames` list) outside `--allow-media-dir`, remote URLs
unless `--allow-remote-media`, more media than `--max-media-parts` / `--max-images` per request, corrupt or
over-long media (the processor's limits), a request field this server does not honour (named), an unknown model or
task, and a full queue (503). A failure after a stream started ends it with an error event. A request that times
out or whose client leaves stops its work. Media are decoded from the request in memory and not kept after it;
the face cache is off unless `--face-cache DIR` turns it on.
"""

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from serve.engine import Engine, RequestError
from serve.errors import error_body

logger = logging.getLogger("emoreason.serve")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass
class Policy:
    """What a request may do: read under `allow_media_dirs`, fetch remote URLs, its size, time and queue."""

    api_key: str | None = None
    allow_media_dirs: tuple[Path, ...] = ()
    allow_remote_media: bool = False
    max_body_bytes: int = 64 * 1024 * 1024
    max_queue: int = 256
    request_timeout_s: float = 300.0
    max_tokens: int = 512
    default_max_tokens: int = 256
    remote_timeout_s: float = 20.0
    max_media_parts: int = 8
    max_images: int = 32
    media_dirs: tuple[Path, ...] = field(init=False, default=())

    def __post_init__(self):
        self.media_dirs = tuple(Path(d).resolve() for d in self.allow_media_dirs)

    def access(self):
        """What one request's media may name and cost (the processor applies it to every key that names a file)."""
        from mllm.parts import MediaAccess

        return MediaAccess(local_dirs=self.media_dirs, max_parts=self.max_media_parts, max_images=self.max_images)

    @property
    def drain_bytes(self) -> int:
        """How much of an over-limit body is read (and dropped) so that the client reads the 413: time, not memory."""
        return max(4 * self.max_body_bytes, 64 * 1024 * 1024)


# The request fields this server honours; any other field a client sends is refused by name, never ignored.
HONOURED_FIELDS = frozenset({
    "messages", "model", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options", "temperature",
    "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "seed", "stop",
    "stop_token_ids", "min_tokens", "logprobs", "top_logprobs", "logit_bias", "user", "tool_choice", "tools",
    "response_format", "parallel_tool_calls", "task", "media_limits",
})  # fmt: skip
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class HTTPRefusal(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


# Media policy -----------------------------------------------------------------------------------------------------


def _checked_url(url: str, where: str, policy: Policy, fetched: dict) -> str:
    """A media URL as the processor may read it: http(s) only when remote media are allowed (fetched before, in
    `fetched`); other schemes refused. Local paths and file:// URLs pass on to the processor, which allows them
    only under `--allow-media-dir` whatever key they sit under (`mllm.parts.MediaAccess`)."""
    if url.startswith(("http://", "https://")):
        if not policy.allow_remote_media:
            raise HTTPRefusal(403, f"{where}: remote media URLs are not allowed on this server "
                              "(send the media as a data: URL)", "media_not_allowed")  # fmt: skip
        return fetched[url]
    if "://" in url and not url.startswith("file://"):
        raise HTTPRefusal(400, f"{where}: unsupported URL scheme in {url[:40]!r}", "invalid_media_url")
    return url


def _media_urls(messages: list) -> list[tuple[dict, str, str, str]]:
    """(part, key, url, where) for every media URL in the messages; malformed shapes are left to the processor."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            for key in ("image_url", "video_url", "audio_url", "image", "video", "audio"):
                value = part.get(key)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str):
                    found.append((part, key, url, f"messages[{i}].content[{j}]"))
    return found


async def _fetch(url: str, where: str, policy: Policy) -> str:
    import httpx

    data = bytearray()
    try:
        async with (
            httpx.AsyncClient(timeout=policy.remote_timeout_s, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise HTTPRefusal(400, f"{where}: fetching {url[:80]} gave HTTP {response.status_code}", "media_fetch")
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > policy.max_body_bytes:
                    raise HTTPRefusal(413, f"{where}: {url[:80]} is larger than the body limit", "media_too_large")
            kind = response.headers.get("content-type", "application/octet-stream").split(";")[0]
    except httpx.HTTPError as exc:
        raise HTTPRefusal(400, f"{where}: fetching {url[:80]} failed: {exc}", "media_fetch") from None
    return f"data:{kind};base64," + base64.b64encode(bytes(data)).decode()


async def police_media(messages: list, policy: Policy) -> list:
    """The messages with every media URL checked (and remote ones fetched when allowed)."""
    found = _media_urls(messages)
    fetched = {}
    for _, _, url, where in found:
        if url.startswith(("http://", "https://")) and policy.allow_remote_media and url not in fetched:
            fetched[url] = await _fetch(url, where, policy)
    for part, key, url, where in found:
        checked = _checked_url(url, where, policy, fetched)
        if isinstance(part[key], dict):
            part[key] = {**part[key], "url": checked}
        else:
            part[key] = checked
    return messages


# The app ----------------------------------------------------------------------------------------------------------


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("emoreason_requests", "chat completion requests by outcome", ["status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("emoreason_request_latency_seconds", "request latency", registry=self.registry)
        self.ttft = Histogram("emoreason_time_to_first_token_seconds", "time to first token", registry=self.registry)
        self.prompt_tokens = Counter("emoreason_prompt_tokens", "prompt tokens", registry=self.registry)
        self.completion_tokens = Counter("emoreason_completion_tokens", "completion tokens", registry=self.registry)
        self.queue = Gauge("emoreason_queue_depth", "requests admitted and not finished", registry=self.registry)


class _Tally:
    """A completion as its deltas arrive: text, token count, finish reason; the first delta times the first token."""

    def __init__(self, started: float, metrics: Metrics, prompt_tokens: int, want_logprobs: bool = False):
        self.started, self.metrics, self.prompt_tokens = started, metrics, prompt_tokens
        self.pieces, self.count, self.finish, self.deltas = [], 0, None, []
        self.want_logprobs = want_logprobs

    def add(self, delta) -> None:
        if not self.pieces:
            self.metrics.ttft.observe(time.perf_counter() - self.started)
        self.pieces.append(delta.text)
        self.count += len(delta.token_ids)
        self.finish = delta.finish_reason or self.finish
        if self.want_logprobs:
            self.deltas.append(delta)

    @staticmethod
    def logprobs_of(deltas) -> dict | None:
        """OpenAI's `logprobs` object (`content`: each token with its log-probability and top alternatives)."""
        entries = [e for d in deltas for e in (d.token_logprobs or ())]
        return {"content": entries} if entries else None

    def choice_logprobs(self) -> dict | None:
        return self.logprobs_of(self.deltas) if self.want_logprobs else None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self):
        from openai.types.completion_usage import CompletionUsage

        self.metrics.prompt_tokens.inc(self.prompt_tokens)
        self.metrics.completion_tokens.inc(self.count)
        return CompletionUsage(prompt_tokens=self.prompt_tokens, completion_tokens=self.count,
                               total_tokens=self.prompt_tokens + self.count)  # fmt: skip


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def create_app(engine: Engine, policy: Policy | None = None, start_engine: bool = True, on_ready=None):
    """The FastAPI app. With `start_engine`, the app's lifespan starts the engine and shuts it down; `on_ready` (a
    coroutine function) runs beside the server once the engine is up."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from openai.types import Model
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.exceptions import VLLMValidationError

    policy = policy or Policy()
    metrics = Metrics()
    state = {"active": 0, "started": time.time()}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start_engine:
            await engine.start()
        waiter = asyncio.create_task(on_ready()) if on_ready is not None else None
        try:
            yield
        finally:
            if waiter is not None:
                waiter.cancel()
            if start_engine:
                await engine.shutdown()

    app = FastAPI(title="EmoReason", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.policy, app.state.counters = engine, metrics, policy, state
    from serve.live_api import add_live_route

    add_live_route(app, engine, policy)  # /v1/live: a WebSocket of frames and audio in, an answer every hop out

    def refuse(status: int, message: str, code=None, param=None) -> JSONResponse:
        metrics.requests.labels(status=str(status)).inc()
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return JSONResponse(error_body(message, code, param, kind), status_code=status)

    @app.exception_handler(HTTPRefusal)
    async def _refusal(request, exc: HTTPRefusal):
        return refuse(exc.status, str(exc), exc.code, exc.param)

    @app.exception_handler(Exception)
    async def _failure(request, exc: Exception):  # never a plain-text 500: OpenAI's error body, the cause logged
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        status = 400 if isinstance(exc, RecursionError) else 500
        message = "the request is nested too deeply" if status == 400 else f"internal error ({type(exc).__name__})"
        return refuse(status, message, "internal_error" if status == 500 else "invalid_request")

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return refuse(404, f"no route {request.method} {request.url.path}", "not_found")

    @app.exception_handler(405)
    async def _not_allowed(request, exc):
        return refuse(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")

    def check_key(request: Request) -> None:
        if policy.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), policy.api_key.encode())
        if not ok:
            raise HTTPRefusal(401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_api_key")

    async def read_body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        too_large = None
        if declared is not None and declared.isdigit() and int(declared) > policy.max_body_bytes:
            too_large = f"the body is {int(declared)} bytes; this server takes at most {policy.max_body_bytes}"
        body, seen = bytearray(), 0
        async for chunk in request.stream():
            seen += len(chunk)
            if too_large is None and seen > policy.max_body_bytes:
                too_large = f"the body is over {policy.max_body_bytes} bytes"
            if too_large is None:
                body += chunk
            elif seen > policy.drain_bytes:  # read (and dropped) up to a bound, so the client reads the 413
                break
        if too_large is not None:
            raise HTTPRefusal(413, too_large, "body_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPRefusal(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise HTTPRefusal(400, "the body is not valid JSON: nested too deeply", "invalid_json") from None
        if not isinstance(data, dict):
            raise HTTPRefusal(400, "the body must be a JSON object", "invalid_json")
        return data

    @app.get("/health")
    async def health():
        if engine.llm is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok", "models": engine.model_names(), "active_requests": state["active"],
                "rendering": engine.stats["rendering"]}  # fmt: skip

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        created = int(state["started"])
        data = [Model(id=n, object="model", created=created, owned_by="emoreason").model_dump()
                for n in engine.model_names()]  # fmt: skip
        return {"object": "list", "data": data}

    def checked_request(body: dict):
        """vLLM's pydantic request from the body, every field either honoured or refused by name."""
        unknown = sorted(set(body) - HONOURED_FIELDS)
        if unknown:
            raise HTTPRefusal(400, f"{unknown[0]}: this server does not support this field", "unsupported",
                              unknown[0])  # fmt: skip
        if body.get("tools"):
            raise HTTPRefusal(400, "tools: this server does not call tools", "unsupported", "tools")
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise HTTPRefusal(400, "tool_choice: this server does not call tools", "unsupported", "tool_choice")
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            raise HTTPRefusal(400, "response_format: only {'type': 'text'}; name a task to constrain the answer",
                              "unsupported", "response_format")  # fmt: skip
        try:
            req = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise HTTPRefusal(400, f"{where}: {first.get('msg')}"[:500], "invalid_request", where or None) from None
        except RecursionError:
            raise HTTPRefusal(400, "the body is nested too deeply", "invalid_request") from None
        except (ValueError, TypeError, VLLMValidationError) as exc:  # vLLM's own model validators
            param = getattr(exc, "parameter", None)
            raise HTTPRefusal(400, f"{exc}"[:500], "invalid_request", param) from None
        if (req.n or 1) != 1:
            raise HTTPRefusal(400, "n > 1 is not supported: send several requests", "unsupported", "n")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, name)
            if value is not None and value < 1:
                raise HTTPRefusal(400, f"{name} must be at least 1, got {value}", "invalid_request", name)
        top = req.top_logprobs or 0
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise HTTPRefusal(400, f"top_logprobs must be 0-{MAX_TOP_LOGPROBS}, got {top}", "invalid_request",
                              "top_logprobs")  # fmt: skip
        if top and not req.logprobs:
            raise HTTPRefusal(400, "top_logprobs needs logprobs: true", "invalid_request", "top_logprobs")
        vocab = engine.vocab_size
        for token, bias in (req.logit_bias or {}).items():
            if not str(token).isdigit() or int(token) >= vocab:
                raise HTTPRefusal(400, f"logit_bias: {token!r} is not a token id of this model (0-{vocab - 1})",
                                  "invalid_request", "logit_bias")  # fmt: skip
            if not -100 <= bias <= 100:
                raise HTTPRefusal(400, f"logit_bias: {bias} for token {token} is outside -100..100",
                                  "invalid_request", "logit_bias")  # fmt: skip
        return req

    async def while_connected(request: Request, work):
        """`work` (awaitable), cancelled if the client goes away first: its work stops with it."""
        task = asyncio.ensure_future(work)

        async def watch():
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise ClientGone
        return task.result()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.perf_counter()
        check_key(request)
        body = await read_body(request)
        req = checked_request(body)
        task = body.pop("task", None)
        limits = body.pop("media_limits", None)
        # A request that names no limit gets the default, within the server's own (--max-tokens may be lower).
        max_tokens = req.max_completion_tokens or req.max_tokens or min(policy.default_max_tokens, policy.max_tokens)
        if max_tokens > policy.max_tokens:
            raise HTTPRefusal(400, f"max_tokens {max_tokens} is over this server's {policy.max_tokens}",
                              "invalid_request", "max_tokens")  # fmt: skip
        if state["active"] >= policy.max_queue:
            raise HTTPRefusal(503, f"the server is busy ({state['active']} requests); retry later", "server_busy")
        messages = await police_media(body["messages"], policy)
        try:
            model_name = engine.served_name(req.model)
            params = engine.constrain(req.to_sampling_params(max_tokens, {}), task, model_name)
            messages = engine.with_question(messages, task, model_name)  # media alone: the task's own question
        except RequestError as exc:
            raise HTTPRefusal(exc.status, str(exc), exc.code, exc.param) from None
        except (ValueError, TypeError, VLLMValidationError) as exc:  # vLLM's own checks of the sampling fields
            raise HTTPRefusal(400, f"sampling parameters: {exc}"[:500], "invalid_request") from None
        state["active"] += 1
        metrics.queue.set(state["active"])
        released = False

        def release(status: str):
            nonlocal released
            if not released:
                released = True
                state["active"] -= 1
                metrics.queue.set(state["active"])
                metrics.requests.labels(status=status).inc()
                metrics.latency.observe(time.perf_counter() - started)

        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        deadline = asyncio.get_running_loop().time() + policy.request_timeout_s

        async def begin():
            """Embeddings, then the first delta: vLLM checks a request when it is added, so a refusal is a 4xx
            before any byte of the answer is sent."""
            embeds = await engine.embed(messages, model_name, limits, access=policy.access())
            generation = engine.stream(messages, model=model_name, task=task, params=params, embeds=embeds,
                                       request_id=rid)  # fmt: skip
            try:
                first = await anext(generation, None)
            except BaseException:
                await generation.aclose()
                raise
            return embeds, generation, first

        try:
            async with asyncio.timeout_at(deadline):
                embeds, generation, first = await while_connected(request, begin())
        except RequestError as exc:
            release(str(exc.status))
            return JSONResponse(error_body(str(exc), exc.code, exc.param), status_code=exc.status)
        except (ValueError, TypeError, VLLMValidationError) as exc:
            release("400")
            return JSONResponse(error_body(f"{exc}"[:500], "invalid_request"), status_code=400)
        except TimeoutError:
            release("408")
            return JSONResponse(error_body("the request timed out while encoding its media", "timeout"), 408)
        except ClientGone:
            release("499")
            return Response(status_code=499)
        except BaseException:
            release("500")
            raise

        tally = _Tally(started, metrics, embeds.tokens, want_logprobs=bool(req.logprobs))

        async def deltas():
            if first is not None:
                yield first
            async for delta in generation:
                yield delta

        if not req.stream:

            async def collect():
                async for delta in deltas():
                    tally.add(delta)

            try:
                async with asyncio.timeout_at(deadline):
                    await while_connected(request, collect())
            except TimeoutError:
                release("408")
                return JSONResponse(error_body("the request timed out", "timeout"), status_code=408)
            except ClientGone:
                release("499")
                return Response(status_code=499)
            except BaseException:
                release("500")
                raise
            finally:
                await generation.aclose()  # aborts the request in vLLM if it is still running
            usage = tally.usage()
            release("200")
            completion = ChatCompletion(
                id=rid,
                object="chat.completion",
                created=created,
                model=model_name,
                choices=[
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": tally.text},
                        "finish_reason": _finish(tally.finish),
                        "logprobs": tally.choice_logprobs(),
                    }
                ],  # fmt: skip
                usage=usage,
                emoreason=engine.parse(tally.text, task, model_name),
            )
            return JSONResponse(completion.model_dump(mode="json", exclude_none=True))

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict, finish=None, logprobs=None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if logprobs is not None:
                choice["logprobs"] = logprobs
            c = ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created, model=model_name,
                                    choices=[choice], **extra)  # fmt: skip
            return f"data: {json.dumps(c.model_dump(mode='json', exclude_none=True))}\n\n"

        async def events():
            status = "499"  # the client left before the end
            try:
                yield chunk({"role": "assistant", "content": ""})
                async with asyncio.timeout_at(deadline):
                    async for delta in deltas():
                        tally.add(delta)
                        if delta.text or delta.token_logprobs:  # a token that decodes to nothing keeps its logprob
                            yield chunk({"content": delta.text}, logprobs=_Tally.logprobs_of([delta]))
                yield chunk({}, _finish(tally.finish), emoreason=engine.parse(tally.text, task, model_name))
                usage = tally.usage()
                if include_usage:
                    c = ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=created,
                                            model=model_name, choices=[], usage=usage)  # fmt: skip
                    yield f"data: {json.dumps(c.model_dump(mode='json', exclude_none=True))}\n\n"
                yield "data: [DONE]\n\n"
                status = "200"
            except TimeoutError:
                status = "408"
                yield f"data: {json.dumps(error_body('the request timed out', 'timeout'))}\n\n"
            except Exception as exc:  # after the stream started: an error event, as OpenAI's server ends a stream
                status = "500"
                logger.exception("request %s failed while streaming", rid)
                message = f"the server failed while answering ({type(exc).__name__})"
                yield f"data: {json.dumps(error_body(message, 'internal_error', kind='server_error'))}\n\n"
            finally:
                await generation.aclose()  # a client that left: the engine aborts the request
                release(status)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# The command ------------------------------------------------------------------------------------------------------

HELP = "Serve a model behind an OpenAI-compatible endpoint (chat completions, streaming, LoRA per model name)."


def add_engine_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="EmoReason model folder (training's output, or make-tiny's)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="also serve this trained folder or LoRA adapter as model NAME (repeatable)")  # fmt: skip
    parser.add_argument("--dtype", default=None,
                        help="vLLM dtype (default: CPU bfloat16 if native, else float32; GPU vLLM's)")  # fmt: skip
    parser.add_argument("--enforce-eager", action="store_true", help="no compiled graphs (fast start, slow serving)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=64, help="sequences vLLM runs at once")
    from serve.engine import add_parallel_arguments

    add_parallel_arguments(parser)


def engine_from_args(args, status=None) -> Engine:
    from serve.engine import parallel_arguments

    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r}: expected NAME=PATH")
        adapters[name] = path
    face_cache = True  # the user's own commands (analyze, eval) cache landmarks of their own files
    if hasattr(args, "face_cache"):  # a server keeps nothing of a request unless its operator turns a cache on
        face_cache = False
        if args.face_cache:
            from mllm.face import FaceCache

            face_cache = FaceCache(Path(args.face_cache) / "faces", max_bytes=int(args.face_cache_mb * 1024 * 1024))
    return Engine(args.model, adapters, dtype=args.dtype, enforce_eager=args.enforce_eager or None,
                  max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                  face_cache=face_cache, status=status, name=getattr(args, "served_model_name", None),
                  **parallel_arguments(args))  # fmt: skip


def add_arguments(parser, port: int = 8000) -> None:
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=port, help="port to listen on (default: %(default)s)")
    if port == 8000:  # `emoreason demo` always has it
        parser.add_argument("--demo", action="store_true", help="also serve the Gradio chat demo at /demo")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the main model's name in requests (default: its folder's; a training run's "
                        "OUTPUT_DIR/model is named OUTPUT_DIR's)")  # fmt: skip
    parser.add_argument("--api-key", default=None, help="require this key (default: $EMOREASON_API_KEY, else none)")
    parser.add_argument("--allow-media-dir", action="append", default=[], metavar="DIR",
                        help="requests may name server-local files under DIR (repeatable; default: none)")  # fmt: skip
    parser.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) media URLs")
    parser.add_argument("--max-body-mb", type=float, default=64.0)
    parser.add_argument("--max-queue", type=int, default=256, help="requests admitted at once; more get 503")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask")
    parser.add_argument("--max-media-parts", type=int, default=8, help="media parts per request (default 8)")
    parser.add_argument("--max-images", type=int, default=32,
                        help="images and video frames per request, all parts together (default 32)")  # fmt: skip
    parser.add_argument(
        "--face-cache",
        default=None,
        metavar="DIR",
        help="keep requests' face landmarks in DIR to answer repeats faster (default: keep nothing)",
    )
    parser.add_argument(
        "--face-cache-mb",
        type=float,
        default=256.0,
        help="bound of --face-cache; the oldest entries are evicted past it (default 256)",
    )


def run(args) -> int:
    import uvicorn

    for d in args.allow_media_dir:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"--allow-media-dir {d}: no such folder")
    positive = {"--max-body-mb": args.max_body_mb, "--max-queue": args.max_queue, "--timeout": args.timeout,
                "--max-tokens": args.max_tokens, "--max-media-parts": args.max_media_parts,
                "--max-images": args.max_images, "--face-cache-mb": args.face_cache_mb}  # fmt: skip
    for name, value in positive.items():
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{name} must be a positive number, got {value}")
    policy = Policy(
        api_key=args.api_key or os.environ.get("EMOREASON_API_KEY") or None,
        allow_media_dirs=tuple(args.allow_media_dir),
        allow_remote_media=args.allow_remote_media,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_queue=args.max_queue,
        request_timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        max_media_parts=args.max_media_parts,
        max_images=args.max_images,
    )
    from serve.startup import StartupLog

    command = "demo" if getattr(args, "demo_path", None) == "/" else "serve"
    with StartupLog(command, verbose=args.verbose or getattr(args, "verbose_top", False)) as log:
        engine = engine_from_args(args, status=log.phase)
        url = f"http://{args.host}:{args.port}"
        demo_path = getattr(args, "demo_path", "/demo") if getattr(args, "demo", False) else None
        where = f"{url}{demo_path} (the demo), {url}/v1 (the API)" if demo_path else f"{url}/v1"

        async def announce():
            """The address, once the server answers on it."""
            import httpx

            async with httpx.AsyncClient(timeout=2) as client:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            log.phase(f"ready: {where}  models: {', '.join(engine.model_names())}")

        app = create_app(engine, policy, on_ready=announce)
        if demo_path:
            from serve.demo import mount

            app = mount(app, engine, demo_path, policy.api_key, policy.max_tokens, policy.max_body_bytes,
                        policy.access())  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
