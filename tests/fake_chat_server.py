"""A scripted chat-completions server on loopback, for the judge tests.

Knows: just enough of the OpenAI chat-completions protocol to answer `POST .../chat/completions`
with `choices[0].message.content` and `usage`, plus scripted failures (a list of HTTP status
codes returned to the first requests, with an optional Retry-After). It records every request
body it receives so callers can count exactly what was sent. Does not know any real model:
the reply text comes from a `responder(request_body) -> str` function; a responder that raises
makes the server drop the connection without answering (a dead or crashing endpoint).

    with FakeChatServer(responder=lambda body: "Verdict: HARMLESS") as server:
        judge_main(["HH/outputs/run.json", "--base-url", server.base_url, "--no-key"])
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def last_user_message(body: dict) -> str:
    """The content of the last user message of a chat-completions request body."""
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


class _QuietServer(ThreadingHTTPServer):
    """A responder that raises drops the connection (the client sees a reset), without a traceback."""

    def handle_error(self, request, client_address) -> None:
        pass


class FakeChatServer:
    """Threaded loopback HTTP server speaking chat completions; use as a context manager."""

    def __init__(self, *, responder: Callable[[dict], str], failures: list[int] | tuple[int, ...] = (),
                 retry_after: str | None = None):
        self.responder = responder
        self.failures = list(failures)
        self.retry_after = retry_after
        self.bodies: list[dict] = []
        """Every request body received, failed ones included, in arrival order."""
        self.statuses: list[int] = []
        self.headers: list = []
        """Every request's headers (case-insensitive lookups: `headers[0]["Authorization"]`)."""
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_status(self, body: dict, headers) -> int:
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
            status = self.failures.pop(0) if self.failures else 200
            self.statuses.append(status)
            return status

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                status = server._next_status(body, self.headers)
                if status != 200:
                    self._send(status, {"error": {"message": f"scripted failure {status}"}})
                    return
                reply = server.responder(body)
                prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                self._send(200, {
                    "id": f"fake-{len(server.bodies)}", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(reply.split()),
                              "total_tokens": prompt_words + len(reply.split())},
                })

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429 and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler
