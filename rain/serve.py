"""`rain serve`: RAIN behind an OpenAI-compatible HTTP endpoint (FastAPI on uvicorn).

    rain serve --config configs/models/embedded.yaml [--host 127.0.0.1] [--port 8000] [--api-key KEY]
               [--batch_size 8] [--queue 32] [--timeout 600] [--model-name NAME] [--section.field=value ...]

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health. Knows: the OpenAI wire
format (request fields, responses, server-sent stream chunks, the error shape), the API key check, and how a
web request waits on the service (rain/service.py), which does the searching. A client that goes away cancels
its search. Tracebacks go to the server log only; the API key goes nowhere.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .service import Answer, RainService, ServeError, Ticket

log = logging.getLogger("rain.serve")
MAX_BODY_BYTES = 8 * 1024 * 1024
POLL_S = 0.25
"""How often a waiting non-streamed request checks that its client is still there."""


def model_id_for(cfg) -> str:
    """The served model's name: 'rain-' and the last part of model.name ('rain-embedded')."""
    return "rain-" + Path(cfg.model.name.rstrip("/")).name


# ---------------------------------------------------------------------------------------------- requests

async def _json_body(request: Request) -> dict:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ServeError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ServeError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ServeError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _int_field(body: dict, name: str, *, minimum: Optional[int] = None) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        rule = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ServeError(400, f"{name} must be {rule}, got {value!r}", param=name)
    return value


def _common(body: dict, model_id: str) -> dict:
    """The fields both endpoints share, checked: model, n, max_tokens, seed, stop, stream, rain."""
    model = body.get("model")
    if model is None:
        raise ServeError(400, "missing required field: model", param="model")
    if model != model_id:
        raise ServeError(404, f"the model {model!r} does not exist; this server has {model_id!r}", param="model",
                         code="model_not_found")
    n = body.get("n")
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise ServeError(400, f"n must be 1 (RAIN gives one answer per request), got {n!r}", param="n")
    for name in ("logprobs", "echo", "top_logprobs"):
        if body.get(name):
            raise ServeError(400, f"{name} is not supported by rain serve", param=name)
    max_tokens = _int_field(body, "max_completion_tokens", minimum=1)
    max_tokens = max_tokens if max_tokens is not None else _int_field(body, "max_tokens", minimum=1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ServeError(400, "stop must be a non-empty string or a list of at most 4 of them", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ServeError(400, f"stream must be true or false, got {stream!r}", param="stream")
    return {"seed": _int_field(body, "seed"), "max_tokens": max_tokens, "stop": stop, "stream": stream,
            "extension": body.get("rain")}


def _messages(body: dict) -> list:
    messages = body.get("messages")
    if messages is None:
        raise ServeError(400, "missing required field: messages", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ServeError(400, f"messages[{i}] must be an object", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ServeError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            content = "\n".join(p["text"] for p in content)
        role = "system" if m.get("role") == "developer" else m.get("role")
        out.append({"role": role, "content": content})
    return out


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if prompt is None:
        raise ServeError(400, "missing required field: prompt", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ServeError(400, "prompt must be one string (one prompt per request)", param="prompt")
    return prompt


# ---------------------------------------------------------------------------------------------- responses

def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _extension(answer: Answer) -> dict:
    return {"mode": answer.mode, "stopped": answer.stopped, "search": answer.search, "stats": answer.stats}


class _Shape:
    """The OpenAI object names and choice layout of one endpoint (chat or text completions)."""

    def __init__(self, chat: bool, model_id: str):
        self.chat, self.model_id = chat, model_id
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choice: dict, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "logprobs": None, **choice}], **extra}

    def response(self, answer: Answer) -> dict:
        content = ({"message": {"role": "assistant", "content": answer.text}} if self.chat
                   else {"text": answer.text})
        return self._envelope("chat.completion" if self.chat else "text_completion",
                              {**content, "finish_reason": answer.finish_reason}, usage=_usage(answer),
                              rain=_extension(answer))

    def chunk(self, text: Optional[str], *, first: bool = False, answer: Optional[Answer] = None) -> dict:
        finish = answer.finish_reason if answer is not None else None
        extra = {"usage": _usage(answer), "rain": _extension(answer)} if answer is not None else {}
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            return self._envelope("chat.completion.chunk", {"delta": delta, "finish_reason": finish}, **extra)
        return self._envelope("text_completion", {"text": text or "", "finish_reason": finish}, **extra)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(ticket: Ticket, shape: _Shape):
    """The stream: a first chunk at once, a chunk per committed segment, the last chunk (finish_reason, usage,
    rain), then [DONE]. A failure after the first chunk is an error event."""
    yield _sse(shape.chunk(None, first=True))
    sent = ""
    while True:
        kind, value = await ticket.events.get()
        if kind == "text":
            if value.startswith(sent) and len(value) > len(sent):
                yield _sse(shape.chunk(value[len(sent):]))
                sent = value
            continue
        if kind == "done":
            if value.text.startswith(sent) and len(value.text) > len(sent):
                yield _sse(shape.chunk(value.text[len(sent):]))
            yield _sse(shape.chunk(None, answer=value))
        else:
            yield _sse(value.payload())
        break
    yield "data: [DONE]\n\n"


class _SearchStream(StreamingResponse):
    """A server-sent event stream that cancels its search however it ends (finished, or the client gone)."""

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _wait(request: Request, ticket: Ticket) -> Answer:
    """The answer, checking every POLL_S that the client is still there (ServeError 499 when it left)."""
    while True:
        try:
            kind, value = await asyncio.wait_for(ticket.events.get(), timeout=POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ServeError(499, "the client closed the request", type="cancelled") from None
            continue
        if kind == "done":
            return value
        if kind == "error":
            raise value


def _error_response(err: ServeError) -> JSONResponse:
    return JSONResponse(err.payload(), status_code=err.status, headers=err.headers)


# ---------------------------------------------------------------------------------------------- the app

def build_app(service: RainService, *, model_id: str, api_key: Optional[str] = None) -> FastAPI:
    """The ASGI app over a service (started and stopped with the app). With `api_key`, every route wants
    'Authorization: Bearer <key>' (compared in constant time)."""
    key = api_key.encode("utf-8") if api_key else None
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="rain serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), key):
            raise ServeError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found" if err.status_code == 404 else "invalid_request_error"
        return _error_response(ServeError(err.status_code, f"{err.detail}: {request.method} {request.url.path}",
                                          type=kind))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.error("unexpected error on %s", request.url.path, exc_info=err)
        return _error_response(ServeError(500, "internal server error; the server log has the details",
                                          type="server_error"))

    async def answer(request: Request, chat: bool):
        authorize(request)
        body = await _json_body(request)
        common = _common(body, model_id)
        if chat:
            ask = service.prepare(messages=_messages(body), seed=common["seed"], max_tokens=common["max_tokens"],
                                  stop=common["stop"], extension=common["extension"])
        else:
            ask = service.prepare(question=_prompt(body), seed=common["seed"], max_tokens=common["max_tokens"],
                                  stop=common["stop"], extension=common["extension"])
        ticket = service.submit(ask, asyncio.get_running_loop())
        shape = _Shape(chat, model_id)
        if common["stream"]:
            return _SearchStream(_events(ticket, shape), on_close=lambda: service.cancel(ticket))
        try:
            return JSONResponse(shape.response(await _wait(request, ticket)))
        finally:
            service.cancel(ticket)  # nothing once finished; frees the slot of a client that left

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": started,
                                            "owned_by": "rain"}]}

    @app.get("/health")
    async def health(request: Request):
        authorize(request)
        return {"model": model_id, **service.health()}

    return app


# ---------------------------------------------------------------------------------------------- command

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain serve", description=(
        "Serve RAIN over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models, "
        "/health. Concurrent requests are searched together."))
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, merged in order)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $RAIN_API_KEY if set; "
                                     "prefer the variable, a command line is visible to other users)")
    p.add_argument("--batch_size", type=int, default=8, help="requests searched at once (default 8)")
    p.add_argument("--queue", type=int, default=32, help="requests waiting beyond those; more get 429 (default 32)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a request may take; then it returns what is committed (default 600; 0: none)")
    p.add_argument("--model-name", help="the model id clients send (default: rain-<last part of model.name>)")
    return p


def serve_main(argv: list) -> int:
    import uvicorn

    import rain
    from .cli import USER_ERRORS, _overrides

    args, rest = _overrides(_parser(), argv)
    api_key = args.api_key or os.environ.get("RAIN_API_KEY") or None
    try:
        cfg = rain.load_config(args.config, rest)
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {args.port}")
        model, tokenizer = rain.load_model(cfg.model)
        service = RainService(model, tokenizer, cfg, batch_size=args.batch_size, queue_size=args.queue,
                              timeout_s=args.timeout or None)
    except USER_ERRORS as err:
        print(f"rain serve: error: {err}", file=sys.stderr)
        return 2
    model_id = args.model_name or model_id_for(cfg)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rain serve: warning: listening on {args.host} without an API key", file=sys.stderr)
    print(f"rain serve: {model_id} at http://{args.host}:{args.port}/v1 (batch {args.batch_size}, queue "
          f"{args.queue}, API key {'required' if api_key else 'off'})", file=sys.stderr, flush=True)
    uvicorn.run(build_app(service, model_id=model_id, api_key=api_key), host=args.host, port=args.port,
                log_level="info")
    return 0
