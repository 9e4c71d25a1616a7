"""The one error shape of every HTTP refusal this server makes (OpenAI's error body): the API's and the demo's."""

from __future__ import annotations


def error_body(message: str, code: str | None = None, param: str | None = None, kind: str = "invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
