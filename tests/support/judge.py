"""A local OpenAI-compatible chat endpoint that plays the LLM judge (seal_engine.core.grading.LLMJudge):
it keeps every prompt it is sent and answers ``verdict(prompt)``, or a 500 while ``fail`` is set."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer:
    def __init__(self, verdict: Callable[[str], str] = lambda _prompt: "yes") -> None:
        self.verdict = verdict
        self.fail = False
        self.prompts: list[str] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                judge.prompts.append(prompt)
                if judge.fail:
                    self._answer(500, {"error": {"message": "the judge is down"}})
                    return
                self._answer(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": judge.verdict(prompt)}}]})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def settings(self) -> dict[str, Any]:
        """``judge`` settings (SEAL_JUDGE__*) that point at this server."""
        return {"base_url": self.url, "api_key": "k", "model": "judge", "timeout_s": 10}

    def __enter__(self) -> JudgeServer:
        threading.Thread(target=self._server.serve_forever, name="test-judge", daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
