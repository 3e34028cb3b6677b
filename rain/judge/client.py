"""OpenAI-compatible chat-completions client on the standard library only.

Knows: the chat-completions wire format (POST `{base_url}/chat/completions`, JSON body with
`model`, `messages`, `max_tokens`, `temperature`; reply `choices[0].message.content` and
`usage`), retry with exponential backoff and jitter on 429 / 5xx / connection errors, the
`Retry-After` header, and token bookkeeping. Does not know prompts, verdicts or caching.

Every backend (this one, the local HF one in `local.py`, fakes in tests) has the same shape:
`complete(messages) -> ChatReply` and a `name`. The key is read from the environment when the
client is built and kept only in the request headers; error messages never include it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from rain.judge.config import JudgeConfig, JudgeError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ChatReply:
    """One judge reply: its text and the tokens the endpoint billed for it."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0


class ChatBackend(Protocol):
    """What the judge needs from a model: a name and one chat turn."""

    name: str

    def complete(self, messages: list[dict]) -> ChatReply: ...


@dataclass
class Usage:
    """Thread-safe running totals of what a backend has sent."""

    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, *, requests: int = 0, retries: int = 0, tokens_in: int = 0, tokens_out: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out

    def as_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries,
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out}


class OpenAIChatClient:
    """Chat backend talking to any OpenAI-compatible endpoint over HTTP."""

    def __init__(self, config: JudgeConfig, *, sleep=time.sleep, rng: random.Random | None = None):
        self.config = config
        self.name = config.judge_id
        self.usage = Usage()
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._shown_url = shown_url(self._url)  # for messages: no user:password@, no query (keys hide there)
        self._headers = {"Content-Type": "application/json"}
        key = config.api_key()
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._sleep = sleep
        self._rng = rng or random.Random()

    def cost_usd(self) -> float | None:
        """Estimated cost of everything sent so far, None when prices are not configured."""
        return self.config.cost_usd(tokens_in=self.usage.tokens_in, tokens_out=self.usage.tokens_out)

    def complete(self, messages: list[dict]) -> ChatReply:
        """Send one chat turn, retrying transient failures; JudgeError when retries run out."""
        body = json.dumps({
            "model": self.config.model, "messages": messages,
            "max_tokens": self.config.max_tokens, "temperature": self.config.temperature,
        }).encode("utf-8")
        last_problem = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            self.usage.add(requests=1)
            try:
                payload = self._post(body)
            except urllib.error.HTTPError as err:
                if err.code not in RETRYABLE_STATUS:
                    raise JudgeError(_http_error_line(self._shown_url, err)) from None
                last_problem = f"HTTP {err.code}"
                self._backoff(attempt, retry_after=err.headers.get("Retry-After") if err.headers else None)
                continue
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
                last_problem = _reason(err)
                self._backoff(attempt, retry_after=None)
                continue
            return self._reply_from(payload)
        raise JudgeError(
            f"cannot get a reply from the judge at {self._shown_url} after {self.config.max_retries + 1} tries "
            f"({last_problem}): check --base-url, that the server is up, or raise --max-retries"
        )

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise JudgeError(f"the judge at {self._shown_url} did not answer with JSON: is --base-url an "
                             f"OpenAI-compatible endpoint (usually ending in /v1)?") from None

    def _reply_from(self, payload: dict) -> ChatReply:
        try:
            text = payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self._shown_url} sent a reply without choices[0].message.content: "
                             f"is it a chat-completions endpoint?") from None
        usage = payload.get("usage") or {}
        reply = ChatReply(text=text, tokens_in=int(usage.get("prompt_tokens") or 0),
                          tokens_out=int(usage.get("completion_tokens") or 0))
        self.usage.add(tokens_in=reply.tokens_in, tokens_out=reply.tokens_out)
        return reply

    def _backoff(self, attempt: int, *, retry_after: str | None) -> None:
        if attempt >= self.config.max_retries:
            return
        self._sleep(backoff_delay(attempt=attempt, base_s=self.config.backoff_base_s,
                                  max_s=self.config.backoff_max_s, retry_after=retry_after, rng=self._rng))


def shown_url(url: str) -> str:
    """`url` without credentials: user:password@ and the query string are dropped."""
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1], query="", fragment=""))


def backoff_delay(*, attempt: int, base_s: float, max_s: float, retry_after: str | None,
                  rng: random.Random) -> float:
    """Seconds to wait before retry `attempt`+1: Retry-After when given, else base*2^attempt with jitter."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), max_s)
        except ValueError:
            pass  # an HTTP-date Retry-After: fall back to exponential backoff
    exponential = min(base_s * (2 ** attempt), max_s)
    return exponential * (0.5 + 0.5 * rng.random())


def _reason(err: Exception) -> str:
    reason = getattr(err, "reason", None)
    return str(reason if reason is not None else err).splitlines()[0][:200]


def _http_error_line(url: str, err: urllib.error.HTTPError) -> str:
    hints = {401: "check the key in the variable named by --api-key-env",
             403: "the key is not allowed to use this model",
             404: "check --base-url (usually ends in /v1) and --judge-model"}
    hint = hints.get(err.code, "check --base-url and --judge-model")
    detail = _error_detail(err)
    return f"the judge at {url} refused the request with HTTP {err.code}{detail}: {hint}"


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The server's own error message, if it sent one, as ' (message)' on one line."""
    try:
        payload = json.loads(err.read() or b"{}")
        message = payload.get("error", {}).get("message") if isinstance(payload.get("error"), dict) else None
    except (json.JSONDecodeError, OSError, AttributeError, ValueError):
        return ""
    return f" ({' '.join(str(message).split())[:200]})" if message else ""
