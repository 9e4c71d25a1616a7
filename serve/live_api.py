"""`/v1/live` on `emoreason serve`: a WebSocket where a client streams frames and audio with their timestamps and
receives an answer event every hop (serve/live.py). Event names and shapes follow OpenAI's Realtime API where they
fit; the API key, the limits and the "no media kept" rule are the endpoint's own.

Client -> server (JSON text messages):
    {"type": "session.update", "session": {"task": "expr", "window_s": 2, "hop_s": 1, "model": NAME}}
    {"type": "input_video_frame.append", "timestamp_s": 1.2, "image": "<base64 JPEG or PNG>"}
    {"type": "input_audio_buffer.append", "timestamp_s": 1.2, "audio": "<base64 16 kHz mono PCM16 LE>"}
Server -> client:
    {"type": "session.created" | "session.updated", "session": {...}}
    {"type": "response.done", "response": {LiveAnswer fields}}
    {"type": "error", "error": {"type": "invalid_request_error", "code": ..., "message": ...}}

A bad event gets an error event and the session goes on; a wrong key (close code 1008), too many sessions (1013)
or a session past its length (1000 after an error event) closes it. Frames are decoded, tracked and kept only
for the window, in memory; nothing of a session is written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
from dataclasses import dataclass

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect  # module level: the route's annotation must resolve here


@dataclass
class LiveLimits:
    sessions: int = 4  # at once
    frame_bytes: int = 2 * 1024 * 1024  # one encoded frame
    frame_pixels: int = 1920 * 1080
    fps: float = 30.0  # frames a second a session may send; faster ones are refused
    seconds: float = 3600.0  # of stream time, per session
    audio_bytes: int = 16000 * 2 * 2  # one audio message: two seconds


def _error(code: str, message: str) -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message}}


def _decode_image(data: str, limits: LiveLimits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str):
        raise ValueError("image must be a base64 string of a JPEG or PNG")
    if len(data) > limits.frame_bytes * 4 // 3 + 4:
        raise ValueError(f"the frame is over {limits.frame_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as picture:
            if picture.format not in ("JPEG", "PNG"):
                raise ValueError(f"image must be JPEG or PNG, got {picture.format}")
            if picture.width * picture.height > limits.frame_pixels:
                size = f"{picture.width}x{picture.height}"
                raise ValueError(f"the frame is {size}; at most {limits.frame_pixels} pixels")
            return np.asarray(picture.convert("RGB"))
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image is not a readable base64 JPEG or PNG ({exc})") from None


def _decode_audio(data: str, limits: LiveLimits) -> np.ndarray:
    if not isinstance(data, str) or len(data) > limits.audio_bytes * 4 // 3 + 4:
        raise ValueError(f"audio must be base64 16 kHz PCM16, at most {limits.audio_bytes} bytes a message")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"audio is not base64 ({exc})") from None
    if len(raw) % 2:
        raise ValueError("audio must be 16-bit samples: an even number of bytes")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _timestamp(event: dict) -> float:
    t = event.get("timestamp_s")
    if isinstance(t, bool) or not isinstance(t, int | float) or not np.isfinite(t) or t < 0:
        raise ValueError(f"timestamp_s must be a finite number of seconds >= 0, got {t!r}")
    return float(t)


def add_live_route(app, engine, policy, limits: LiveLimits | None = None) -> None:
    from serve.live import LiveSession

    limits = limits or LiveLimits()
    open_sessions = {"count": 0}  # with the demo's Live tab (serve/live_demo.py): one limit for both
    app.state.live_limits, app.state.live_sessions = limits, open_sessions

    @app.websocket("/v1/live")
    async def live(socket: WebSocket):
        if policy.api_key is not None:
            header = socket.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            key = policy.api_key.encode()
            if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key)):
                await socket.close(code=1008, reason="missing or wrong API key (Authorization: Bearer KEY)")
                return
        if open_sessions["count"] >= limits.sessions:
            await socket.close(code=1013, reason=f"this server runs at most {limits.sessions} live sessions at once")
            return
        open_sessions["count"] += 1
        await socket.accept()
        settings = {"task": "expr", "window_s": 2.0, "hop_s": 1.0, "model": None}
        session: LiveSession | None = None
        sender: asyncio.Task | None = None
        last_frame: float | None = None

        def start() -> LiveSession:
            return LiveSession(engine, task=settings["task"], window_s=settings["window_s"],
                               hop_s=settings["hop_s"], model=settings["model"])  # fmt: skip

        async def send_answers(s: LiveSession) -> None:
            while True:
                answer = await s.answers.get()
                await socket.send_json({"type": "response.done", "response": answer.to_json()})

        try:
            session = start()
            sender = asyncio.create_task(send_answers(session))
            await socket.send_json({"type": "session.created", "session": settings})
            while True:
                try:
                    event = await socket.receive_json()
                except (ValueError, KeyError) as exc:
                    await socket.send_json(_error("invalid_json", f"events are JSON objects ({exc})"))
                    continue
                kind = event.get("type") if isinstance(event, dict) else None
                try:
                    if kind == "session.update":
                        update = event.get("session")
                        if not isinstance(update, dict) or set(update) - set(settings):
                            raise ValueError(f"session takes {sorted(settings)}")
                        candidate = {**settings, **update}
                        engine.served_name(candidate["model"])  # an unknown model is refused here
                        new = LiveSession(engine, task=candidate["task"], window_s=float(candidate["window_s"]),
                                          hop_s=float(candidate["hop_s"]), model=candidate["model"])  # fmt: skip
                        await session.drain()
                        sender.cancel()
                        settings, session, last_frame = candidate, new, None
                        sender = asyncio.create_task(send_answers(session))
                        await socket.send_json({"type": "session.updated", "session": settings})
                    elif kind == "input_video_frame.append":
                        t = _timestamp(event)
                        if t > limits.seconds:
                            await socket.send_json(_error("session_too_long", f"sessions last {limits.seconds} s"))
                            break
                        if last_frame is not None and t < last_frame + 1.0 / limits.fps - 1e-6:
                            raise ValueError(f"frames come at most {limits.fps:g} a second, in time order")
                        rgb = await asyncio.to_thread(_decode_image, event.get("image"), limits)
                        await asyncio.to_thread(session.add_frame, t, rgb)
                        last_frame = t
                        await session.tick(t)
                    elif kind == "input_audio_buffer.append":
                        t = _timestamp(event)
                        session.add_audio(t, _decode_audio(event.get("audio"), limits))
                    else:
                        raise ValueError(
                            f"unknown event type {kind!r}; valid: session.update, input_video_frame.append, "
                            "input_audio_buffer.append"
                        )
                except ValueError as exc:
                    await socket.send_json(_error("invalid_event", str(exc)))
        except WebSocketDisconnect:
            pass
        finally:
            open_sessions["count"] -= 1
            if sender is not None:
                sender.cancel()
            if session is not None:
                await session.drain()
            with contextlib.suppress(RuntimeError):  # already closed
                await socket.close()
