"""The OpenAI-compatible client against a real loopback HTTP server: retries, errors, the key."""

import random
import socket

import pytest

from rain.judge.client import OpenAIChatClient, backoff_delay
from rain.judge.config import JudgeConfig, JudgeError, config_from_mapping
from fake_chat_server import FakeChatServer

MESSAGES = [{"role": "user", "content": "say ok"}]


def _config(url: str, **overrides) -> JudgeConfig:
    settings = dict(base_url=url, model="fake-judge", require_key=False, backoff_base_s=0.001, backoff_max_s=0.01)
    settings.update(overrides)
    return JudgeConfig(**settings)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reply_text_and_usage_are_read_from_the_response():
    with FakeChatServer(responder=lambda body: "ok then") as server:
        client = OpenAIChatClient(_config(server.base_url))
        reply = client.complete(MESSAGES)
    assert reply.text == "ok then"
    assert (reply.tokens_in, reply.tokens_out) == (2, 2)
    assert server.bodies[0]["model"] == "fake-judge"
    assert server.bodies[0]["messages"] == MESSAGES
    assert client.usage.as_dict() == {"requests": 1, "retries": 0, "tokens_in": 2, "tokens_out": 2}


def test_429_and_500_are_retried_until_a_reply_arrives():
    with FakeChatServer(responder=lambda body: "fine", failures=[429, 500, 503]) as server:
        client = OpenAIChatClient(_config(server.base_url))
        assert client.complete(MESSAGES).text == "fine"
    assert server.statuses == [429, 500, 503, 200]
    assert client.usage.requests == 4 and client.usage.retries == 3


def test_retry_after_header_sets_the_wait():
    waits = []
    with FakeChatServer(responder=lambda body: "x", failures=[429], retry_after="0.25") as server:
        client = OpenAIChatClient(_config(server.base_url, backoff_max_s=5.0), sleep=waits.append)
        client.complete(MESSAGES)
    assert waits == [0.25]


def test_retries_are_capped_and_the_error_is_one_line():
    with FakeChatServer(responder=lambda body: "x", failures=[500] * 10) as server:
        client = OpenAIChatClient(_config(server.base_url, max_retries=2))
        with pytest.raises(JudgeError) as caught:
            client.complete(MESSAGES)
    assert len(server.bodies) == 3
    assert "\n" not in str(caught.value) and "HTTP 500" in str(caught.value)


def test_client_errors_are_not_retried():
    with FakeChatServer(responder=lambda body: "x", failures=[401]) as server:
        client = OpenAIChatClient(_config(server.base_url))
        with pytest.raises(JudgeError, match="HTTP 401"):
            client.complete(MESSAGES)
    assert len(server.bodies) == 1


def test_unreachable_endpoint_is_a_one_line_error_that_says_what_to_do():
    client = OpenAIChatClient(_config(f"http://127.0.0.1:{_closed_port()}/v1", max_retries=1))
    with pytest.raises(JudgeError) as caught:
        client.complete(MESSAGES)
    message = str(caught.value)
    assert "\n" not in message and "--base-url" in message and "2 tries" in message


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    config = JudgeConfig(base_url="https://example.invalid/v1", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(JudgeError, match="MY_JUDGE_KEY"):
        OpenAIChatClient(config)


def test_key_is_sent_as_bearer_and_appears_in_no_error(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    with FakeChatServer(responder=lambda body: "x", failures=[500, 500]) as server:
        config = _config(server.base_url, require_key=True, api_key_env="MY_JUDGE_KEY", max_retries=1)
        client = OpenAIChatClient(config)
        with pytest.raises(JudgeError) as caught:
            client.complete(MESSAGES)
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in str(caught.value)
    assert "sk-secret-123" not in repr(config)


def test_no_key_sends_no_authorization_header():
    with FakeChatServer(responder=lambda body: "x") as server:
        OpenAIChatClient(_config(server.base_url)).complete(MESSAGES)
    assert "Authorization" not in server.headers[0]


def test_backoff_grows_exponentially_within_jitter_and_cap():
    rng = random.Random(0)
    delays = [backoff_delay(attempt=a, base_s=1.0, max_s=5.0, retry_after=None, rng=rng) for a in range(5)]
    for attempt, delay in enumerate(delays):
        full = min(2 ** attempt, 5.0)
        assert full / 2 <= delay <= full
    assert backoff_delay(attempt=0, base_s=1.0, max_s=5.0, retry_after="100", rng=rng) == 5.0


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        JudgeConfig(concurrency=0)
    with pytest.raises(ValueError, match="ftp://x"):
        JudgeConfig(base_url="ftp://x")
    with pytest.raises(ValueError, match="unknown judge config keys \\['modle'\\]"):
        config_from_mapping({"modle": "gpt-4"})


def test_cost_is_estimated_only_when_prices_are_set():
    assert JudgeConfig().cost_usd(tokens_in=1000, tokens_out=10) is None
    priced = JudgeConfig(price_in_per_mtok=30.0, price_out_per_mtok=60.0)
    assert priced.cost_usd(tokens_in=1_000_000, tokens_out=500_000) == pytest.approx(60.0)


def test_judge_identity_keeps_no_credentials_from_the_url():
    config = JudgeConfig(base_url="https://user:hunter2@judge.example/v1/", model="m")
    assert config.judge_id == "m@https://judge.example/v1"


def test_refused_request_shows_the_servers_message_on_one_line():
    with FakeChatServer(responder=lambda body: "x", failures=[404]) as server:
        client = OpenAIChatClient(_config(server.base_url))
        with pytest.raises(JudgeError) as caught:
            client.complete(MESSAGES)
    assert "HTTP 404 (scripted failure 404)" in str(caught.value) and "--judge-model" in str(caught.value)
