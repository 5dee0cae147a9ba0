"""The OpenAI wire format shared by the generation backends: chat messages, usage, SSE framing,
streaming responses, and the message of an upstream error body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from fastapi.responses import StreamingResponse

from api.schemas import ChatCompletionIn

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_messages(body: ChatCompletionIn) -> list[dict[str, str]]:
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def sse_error(message: str) -> bytes:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": "internal_error"}})


def stream_response(gen: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers=STREAM_HEADERS)


def error_message(body: object) -> str:
    """The message of an error body in either of vLLM's shapes (or FastAPI's ``detail``)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if "detail" in body:
            return str(body["detail"])
        return json.dumps(body)[:500]
    return str(body or "")[:500]


def response_message(r: httpx.Response) -> str:
    try:
        return error_message(r.json())
    except ValueError:
        return r.text.strip()[:500] or r.reason_phrase
