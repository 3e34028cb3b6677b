"""OpenAI-compatible chat-completions client, on the official `openai` package.

Knows: how to send one chat turn (`model`, `messages`, `max_tokens`, `temperature`; reply
`choices[0].message.content` and `usage`) through `openai.OpenAI` at any base URL, retry with
exponential backoff and jitter on 429 / 5xx / connection errors and timeouts, the `Retry-After`
header, and token bookkeeping. Does not know prompts, verdicts or caching.

Every backend (this one, the local HF one in `local.py`, fakes in tests) has the same shape:
`complete(messages) -> ChatReply` and a `name`. The key is read from the environment when the
client is built and kept only in the request headers; error messages never include it.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
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
    """Chat backend talking to any OpenAI-compatible endpoint through the official `openai` client, which does
    the HTTP (base URL, timeouts, response parsing, typed errors); the retry loop stays here so the backoff
    settings, Retry-After and the request counts are this project's."""

    def __init__(self, config: JudgeConfig, *, sleep=time.sleep, rng: random.Random | None = None):
        import openai

        self.config = config
        self.name = config.judge_id
        self.usage = Usage()
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._shown_url = shown_url(self._url)  # for messages: no user:password@, no query (keys hide there)
        key = config.api_key()
        # without a key no Authorization header is sent (the client wants some key string to be built)
        self._client = openai.OpenAI(base_url=config.base_url, api_key=key or "no-key", max_retries=0,
                                     timeout=config.timeout_s)
        self._extra_headers = {} if key is not None else {"Authorization": openai.Omit()}
        self._sleep = sleep
        self._rng = rng or random.Random()

    def cost_usd(self) -> float | None:
        """Estimated cost of everything sent so far, None when prices are not configured."""
        return self.config.cost_usd(tokens_in=self.usage.tokens_in, tokens_out=self.usage.tokens_out)

    def complete(self, messages: list[dict]) -> ChatReply:
        """Send one chat turn, retrying transient failures; JudgeError when retries run out."""
        import openai

        last_problem = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            self.usage.add(requests=1)
            try:
                payload = self._client.chat.completions.create(
                    model=self.config.model, messages=messages, max_tokens=self.config.max_tokens,
                    temperature=self.config.temperature, extra_headers=self._extra_headers)
            except openai.APIStatusError as err:
                if err.status_code not in RETRYABLE_STATUS:
                    raise JudgeError(_http_error_line(self._shown_url, err)) from None
                last_problem = f"HTTP {err.status_code}"
                self._backoff(attempt, retry_after=err.response.headers.get("retry-after"))
                continue
            except openai.APIConnectionError as err:  # timeouts included
                last_problem = _reason(err)
                self._backoff(attempt, retry_after=None)
                continue
            return self._reply_from(payload)
        raise JudgeError(
            f"cannot get a reply from the judge at {self._shown_url} after {self.config.max_retries + 1} tries "
            f"({last_problem}): check --base-url, that the server is up, or raise --max-retries"
        )

    def _reply_from(self, payload) -> ChatReply:
        if isinstance(payload, str):  # a 200 that was not JSON
            raise JudgeError(f"the judge at {self._shown_url} did not answer with JSON: is --base-url an "
                             f"OpenAI-compatible endpoint (usually ending in /v1)?")
        choices = getattr(payload, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            raise JudgeError(f"the judge at {self._shown_url} sent a reply without choices[0].message.content: "
                             f"is it a chat-completions endpoint?")
        usage = payload.usage
        reply = ChatReply(text=message.content or "", tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
                          tokens_out=int(getattr(usage, "completion_tokens", 0) or 0))
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
    cause = err.__cause__ or err
    reason = getattr(cause, "reason", None)
    return str(reason if reason is not None else cause).splitlines()[0][:200] or type(cause).__name__


def _http_error_line(url: str, err) -> str:
    hints = {401: "check the key in the variable named by --api-key-env",
             403: "the key is not allowed to use this model",
             404: "check --base-url (usually ends in /v1) and --judge-model"}
    hint = hints.get(err.status_code, "check --base-url and --judge-model")
    return f"the judge at {url} refused the request with HTTP {err.status_code}{_error_detail(err)}: {hint}"


def _error_detail(err) -> str:
    """The server's own error message, if it sent one, as ' (message)' on one line."""
    body = err.body
    message = body.get("message") if isinstance(body, dict) else None
    return f" ({' '.join(str(message).split())[:200]})" if message else ""
