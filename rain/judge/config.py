"""Judge settings and the one error type the judge commands report to users.

Knows: which endpoint to call (base URL, model name, where the key lives), how hard to retry,
how many requests may be in flight, what tokens cost. Does not know about benchmarks, prompts
or files: those live in `prompts.py` and `score.py`.

The API key itself is never stored here; only the NAME of the environment variable holding it.
`api_key()` reads it at the moment of use so it never sits in a dataclass that could be logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from urllib.parse import urlparse


class JudgeError(Exception):
    """A user-facing failure: the message is one line and says what to do."""


@dataclass(frozen=True)
class JudgeConfig:
    """How to reach and drive an OpenAI-compatible chat-completions judge."""

    base_url: str = "https://api.openai.com/v1"
    """Endpoint root; `/chat/completions` is appended. Any OpenAI-compatible server (vLLM, llama.cpp)."""
    model: str = "gpt-4"
    """Judge model name sent in each request. The paper used GPT-4."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key. The key is never written anywhere."""
    require_key: bool = True
    """False (`--no-key`) for a local server that needs no key; then no Authorization header is sent."""
    max_retries: int = 6
    """Retries per request on 429, 5xx and connection errors, >= 0. Default 6."""
    backoff_base_s: float = 1.0
    """First backoff delay in seconds, doubled each retry with jitter, > 0 (tests use ~0.001)."""
    backoff_max_s: float = 60.0
    """Upper bound on one backoff delay (and on an honoured Retry-After), >= backoff_base_s."""
    timeout_s: float = 120.0
    """Socket timeout of one HTTP request in seconds, > 0."""
    concurrency: int = 4
    """Requests in flight at once, >= 1."""
    parse_retries: int = 2
    """How many times a reply without a readable verdict is asked again before it is recorded as unparseable, >= 0."""
    max_tokens: int = 256
    """max_tokens of each judge reply, >= 1."""
    temperature: float = 0.0
    """Sampling temperature of the judge, in [0, 2]. 0 for reproducible verdicts."""
    price_in_per_mtok: float | None = None
    """USD per million prompt tokens; with price_out_per_mtok enables the cost estimate. None = unknown."""
    price_out_per_mtok: float | None = None
    """USD per million completion tokens. None = unknown."""

    def __post_init__(self) -> None:
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            shown = parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1], query="").geturl()
            raise ValueError(f"base_url must be an http(s) URL, got {shown!r}")
        if not self.model:
            raise ValueError(f"model must be a non-empty name, got {self.model!r}")
        if not self.api_key_env.isidentifier():
            raise ValueError(f"api_key_env must be an environment variable name, got {self.api_key_env!r}")
        _check(self.max_retries >= 0, "max_retries must be >= 0", self.max_retries)
        _check(self.backoff_base_s > 0, "backoff_base_s must be > 0", self.backoff_base_s)
        _check(self.backoff_max_s >= self.backoff_base_s, "backoff_max_s must be >= backoff_base_s", self.backoff_max_s)
        _check(self.timeout_s > 0, "timeout_s must be > 0", self.timeout_s)
        _check(self.concurrency >= 1, "concurrency must be >= 1", self.concurrency)
        _check(self.parse_retries >= 0, "parse_retries must be >= 0", self.parse_retries)
        _check(self.max_tokens >= 1, "max_tokens must be >= 1", self.max_tokens)
        _check(0.0 <= self.temperature <= 2.0, "temperature must be in [0, 2]", self.temperature)
        for name in ("price_in_per_mtok", "price_out_per_mtok"):
            value = getattr(self, name)
            _check(value is None or value >= 0, f"{name} must be >= 0 or None", value)

    @property
    def judge_id(self) -> str:
        """Identity of the judge for cache keys and summaries: model name at endpoint (any user:password@ dropped)."""
        parsed = urlparse(self.base_url.rstrip("/"))
        netloc = parsed.netloc.rsplit("@", 1)[-1]
        return f"{self.model}@{parsed._replace(netloc=netloc, query='', fragment='').geturl()}"

    def api_key(self) -> str | None:
        """The key from the environment, None when `require_key` is off; JudgeError when missing."""
        if not self.require_key:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise JudgeError(
                f"environment variable {self.api_key_env} is not set: export your API key there, "
                f"name another variable with --api-key-env, or pass --no-key for a local server"
            )
        return key

    def cost_usd(self, *, tokens_in: int, tokens_out: int) -> float | None:
        """Estimated cost of the given token counts, None when prices are not configured."""
        if self.price_in_per_mtok is None or self.price_out_per_mtok is None:
            return None
        return (tokens_in * self.price_in_per_mtok + tokens_out * self.price_out_per_mtok) / 1e6


def config_from_mapping(mapping: dict) -> JudgeConfig:
    """Build a JudgeConfig from a YAML/JSON mapping; unknown keys are an error listing the valid ones."""
    valid = {f.name for f in fields(JudgeConfig)}
    unknown = sorted(set(mapping) - valid)
    if unknown:
        raise ValueError(f"unknown judge config keys {unknown}; valid keys are {sorted(valid)}")
    return JudgeConfig(**mapping)


def is_loopback(base_url: str) -> bool:
    """True when the endpoint is on this machine (where a key is often unnecessary)."""
    host = urlparse(base_url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _check(ok: bool, message: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{message}, got {value!r}")
