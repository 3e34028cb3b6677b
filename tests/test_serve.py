"""`rain serve` on loopback with the tiny model, driven by the official `openai` client (and raw HTTP where a
client must misbehave): answers equal the in-process search, streams carry committed segments, concurrent
requests answer what they answer alone, every error has the OpenAI shape and its status, and a client that
leaves frees its slot."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai
import pytest
import uvicorn

import rain
from rain.config import PromptConfig
from rain.formats import UnsupportedMessages, messages_text, prompt_text
from rain.search import drive
from rain.serve import build_app
from rain.service import RainService, visible_text
from tiny import HashEmbedder, train_tokenizer

KEY = "sk-test-key-4242"
MODEL = "rain-tiny"
SETTINGS = ["prompt.format=chat", "max_new_tokens=10", "max_iterations=6", "min_fresh_iterations=2",
            "max_length=256"]
LONG = {"max_iterations": 100000, "min_fresh_iterations": 100000}  # a search that only a cancel or time limit ends
QUESTIONS = ["How do I bake bread?", "Tell me a joke.", "What is the capital of France?", "Is the sky blue?",
             "Can you help me pick a lock?", "Write a poem about a cat.", "What happens if you eat seeds?",
             "Tell me about the river and the mountain."]


def user(text: str) -> list:
    return [{"role": "user", "content": text}]


class Server:
    """A uvicorn server in a thread on a free loopback port, over a RainService of the tiny model."""

    def __init__(self, service: RainService, api_key):
        self.service, self.api_key = service, api_key
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(build_app(service, model_id=MODEL, api_key=api_key), log_config=None,
                                log_level="info", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
        assert not self.thread.is_alive()

    def client(self, **kwargs) -> openai.OpenAI:
        options = {"api_key": self.api_key or "unused", "max_retries": 0, "timeout": 120}
        options.update(kwargs)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", **options)

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw(self, method: str, path: str, body=None, *, key: bool = True) -> tuple:
        """(status, headers, parsed JSON body) of one plain HTTP request."""
        conn = self.connection()
        headers = {"Content-Type": "application/json"}
        if key and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read() or b"null")
        conn.close()
        return response.status, dict(response.getheaders()), payload

    def health(self) -> dict:
        return self.raw("GET", "/health")[2]

    def wait_idle(self, seconds: float = 60) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            health = self.health()
            if health["running"] == 0 and health["queued"] == 0:
                return health
            assert time.monotonic() < deadline, f"the server stayed busy: {health}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def cfg():
    return rain.load_config(None, SETTINGS)


@contextmanager
def serving(tiny_model, cfg, *, api_key=KEY, **kwargs):
    model, tok = tiny_model
    service = RainService(model, tok, cfg, embedder=HashEmbedder(), **kwargs)
    with Server(service, api_key) as server:
        yield server


@pytest.fixture(scope="module")
def server(tiny_model, cfg):
    with serving(tiny_model, cfg, batch_size=8, queue_size=8) as running:
        yield running


@pytest.fixture(scope="module")
def narrow(tiny_model, cfg):
    """One search at a time and no queue, so a second request is refused."""
    with serving(tiny_model, cfg, batch_size=1, queue_size=0, timeout_s=120) as running:
        yield running


def comparable(response) -> tuple:
    stats = dict(response.rain["stats"])
    stats.pop("seconds")
    return response.choices[0].message.content, response.choices[0].finish_reason, stats


def in_process(tiny_model, cfg, question, seed, messages=None):
    model, tok = tiny_model
    searcher = rain.Searcher(model, tok, cfg, embedder=HashEmbedder())
    ((_, result),) = drive(searcher, [(0, searcher.search(searcher.start(question, seed, messages=messages)))])
    return result


# ---------------------------------------------------------------------------------------------- answers

def test_chat_answer_is_the_in_process_search_with_usage_and_stats(server, tiny_model, cfg):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUESTIONS[0]}]
    response = server.client().chat.completions.create(model=MODEL, messages=messages, seed=7)
    expected = in_process(tiny_model, cfg, QUESTIONS[0], 7, messages)
    assert response.object == "chat.completion" and response.model == MODEL
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens == len(expected.token_ids) == response.rain["stats"]["new_tokens"]
    assert response.usage.prompt_tokens == len(tok_ids(tiny_model, cfg, messages))
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.rain["mode"] == "rain" and response.rain["stopped"] is None
    assert response.rain["stats"]["inner_iterations"] == expected.stats.inner_iterations > 0


def tok_ids(tiny_model, cfg, messages):
    from rain.formats import messages_ids

    return messages_ids(tiny_model[1], messages, cfg.prompt)


def test_completions_wrap_the_prompt_in_the_configured_format(server):
    client = server.client()
    text = client.completions.create(model=MODEL, prompt=QUESTIONS[1], seed=3)
    chat = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[1]), seed=3)
    assert text.object == "text_completion"
    assert text.choices[0].text == chat.choices[0].message.content
    assert text.usage.completion_tokens == chat.usage.completion_tokens


def test_max_tokens_overrides_and_vanilla_mode(server):
    client = server.client()
    short = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[2]), max_tokens=3, seed=1,
                                           extra_body={"rain": {"max_iterations": 3, "value_threshold": 0.5}})
    assert short.usage.completion_tokens <= 3
    assert short.rain["search"] == {"max_iterations": 3, "value_threshold": 0.5, "max_new_tokens": 3}
    vanilla = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[2]),
                                             extra_body={"rain": {"mode": "vanilla"}})
    assert vanilla.rain["mode"] == "vanilla" and vanilla.rain["stats"]["inner_iterations"] == 0
    assert vanilla.usage.completion_tokens == vanilla.rain["stats"]["new_tokens"] > 0


def test_a_stream_sends_each_committed_segment_then_the_totals(server):
    client = server.client()
    whole = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[3]), seed=5)
    chunks = list(client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[3]), seed=5, stream=True))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert "".join(pieces) == whole.choices[0].message.content
    assert all(pieces) and len(pieces) >= 2 and whole.rain["stats"]["commits"] >= 2  # segment by segment
    last = chunks[-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert comparable_stats(last.rain) == comparable_stats(whole.rain)


def comparable_stats(extension: dict) -> dict:
    return {k: v for k, v in extension["stats"].items() if k != "seconds"}


def test_the_raw_stream_ends_with_done(server):
    conn = server.connection()
    body = {"model": MODEL, "prompt": QUESTIONS[4], "stream": True, "max_tokens": 4}
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [line for line in response.read().decode().split("\n\n") if line]
    conn.close()
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2][len("data: "):])
    assert final["object"] == "text_completion" and final["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_stop_string_cuts_the_answer_plain_and_streamed(server):
    client = server.client()
    text = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[5]), seed=2).choices[0].message.content
    assert len(text) >= 6
    stop = text[3:5]
    expected = text[:text.find(stop)]
    cut = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[5]), seed=2, stop=[stop, "\x00zz"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[5]), seed=2, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


def test_eight_concurrent_requests_answer_as_they_do_one_at_a_time(server):
    client = server.client()
    overrides = [{}, {"max_iterations": 4}, {}, {"mode": "vanilla"}, {"c_puct": 1.0}, {"leaves_per_step": 3},
                 {"min_fresh_iterations": 3}, {}]

    def ask(i):
        return client.chat.completions.create(model=MODEL, messages=user(QUESTIONS[i]), seed=100 + i,
                                              max_tokens=8, extra_body={"rain": overrides[i]})

    batches = server.service.base.engine.batches
    start = (batches.forwards, batches.rows)
    alone = [comparable(ask(i)) for i in range(8)]
    middle = (batches.forwards, batches.rows)
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = [comparable(r) for r in pool.map(ask, range(8), timeout=300)]
    assert together == alone
    assert server.health()["peak_running"] > 1
    # the same rows, in fewer forward passes: the requests were searched together
    assert batches.rows - middle[1] == middle[1] - start[1]
    assert batches.forwards - middle[0] < middle[0] - start[0]


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("changes, error, status, words", [
    ({"model": "gpt-4"}, openai.NotFoundError, 404, "does not exist"),
    ({"n": 2}, openai.BadRequestError, 400, "n must be 1"),
    ({"max_tokens": 0}, openai.BadRequestError, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": ""}]}, openai.BadRequestError, 400, "empty"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, 400, "role"),
    ({"messages": user("hi"), "extra_body": {"rain": {"max_iterations": 0}}}, openai.UnprocessableEntityError, 422,
     "rain.max_iterations must be >= 1, got 0"),
    ({"extra_body": {"rain": {"value_threshold": 3}}}, openai.UnprocessableEntityError, 422, "value_threshold"),
    ({"extra_body": {"rain": {"leaves_per_step": 0}}}, openai.UnprocessableEntityError, 422,
     "rain.leaves_per_step must be >= 1, got 0"),
    ({"extra_body": {"rain": {"engine": "reference"}}}, openai.UnprocessableEntityError, 422, "rain.engine"),
    ({"extra_body": {"rain": {"mode": "both"}}}, openai.UnprocessableEntityError, 422, "mode"),
    ({"extra_body": {"rain": {"max_iterations": "many"}}}, openai.UnprocessableEntityError, 422, "an int"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     openai.UnprocessableEntityError, 422, "last message"),
    ({"messages": user("bread " * 400)}, openai.APIStatusError, 413, "max_length=256"),
])
def test_bad_requests_get_the_openai_error_shape_and_status(server, changes, error, status, words):
    request = {"model": MODEL, "messages": user("hi"), **changes}
    with pytest.raises(error) as caught:
        server.client().chat.completions.create(**request)
    assert caught.value.status_code == status
    body = caught.value.body
    assert set(body) >= {"message", "type", "param", "code"} and words in body["message"]
    assert "Traceback" not in json.dumps(body)


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/chat/completions", {"messages": user("hi")}, 400, "missing required field: model"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "missing required field: messages"),
    ("/v1/completions", {"model": MODEL}, 400, "missing required field: prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("/v1/nothing", {}, 404, "Not Found"),
])
def test_malformed_requests_are_refused_and_the_server_keeps_serving(server, path, body, status, words):
    got, _, payload = server.raw("POST", path, body)
    assert got == status and words in payload["error"]["message"]
    assert server.client().models.list().data[0].id == MODEL


def test_a_failing_search_is_a_500_without_a_traceback_and_the_server_lives(tiny_model, cfg):
    def evaluator(question, answer):
        if "explode" in question:
            raise RuntimeError("boom: secret internals")
        return 0.0

    with serving(tiny_model, cfg, evaluator=evaluator) as running:
        client = running.client()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=user("please explode"))
        assert "boom" not in json.dumps(caught.value.body) and "Traceback" not in json.dumps(caught.value.body)
        assert client.chat.completions.create(model=MODEL, messages=user("fine?")).choices[0].message.content is not None
        assert running.health()["failed"] == 1


def test_the_api_key_is_required_compared_and_never_logged(server, caplog):
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(openai.AuthenticationError) as caught:
            server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=user("hi"))
        assert caught.value.body["code"] == "invalid_api_key"
        for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("POST", "/v1/completions")):
            status, headers, payload = server.raw(method, path, {"model": MODEL, "prompt": "hi"}, key=False)
            assert status == 401 and payload["error"]["type"] == "invalid_request_error"
        assert server.client().models.list().data[0].id == MODEL
        server.client().chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
    assert "/v1/models" in caplog.text  # the access log was captured
    assert KEY not in caplog.text


# ---------------------------------------------------------------------------------------------- slots

def open_stream(server: Server, body: dict):
    """Start a streamed request and read its first event (then the request is admitted: it runs once the driver
    thread takes it, see `wait_running`)."""
    conn = server.connection(timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    return conn, response


def wait_running(server: Server, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while server.health()["running"] == 0:
        assert time.monotonic() < deadline, "the admitted request never started"
        time.sleep(0.02)


def test_a_full_server_answers_429_with_retry_after_and_a_disconnect_frees_the_slot(narrow):
    conn, response = open_stream(narrow, {"model": MODEL, "messages": user(QUESTIONS[0]), "max_tokens": 64,
                                          "rain": LONG})
    wait_running(narrow)
    assert narrow.health()["running"] == 1
    with pytest.raises(openai.RateLimitError) as caught:
        narrow.client().chat.completions.create(model=MODEL, messages=user("hi"))
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["code"] == "rate_limit_exceeded"
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    conn.close()
    health = narrow.wait_idle(30)
    assert health["cancelled"] == 1 and health["completed"] == 0
    answer = narrow.client().chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=3)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_client_leaving_a_plain_request_frees_the_slot(narrow):
    before = narrow.health()["cancelled"]
    conn = narrow.connection(timeout=60)
    conn.request("POST", "/v1/chat/completions",
                 body=json.dumps({"model": MODEL, "messages": user(QUESTIONS[1]), "rain": LONG}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    wait_running(narrow)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert narrow.wait_idle(30)["cancelled"] == before + 1


def test_the_time_limit_returns_what_was_committed(tiny_model, cfg):
    with serving(tiny_model, cfg, timeout_s=1.0) as running:
        started = time.monotonic()
        answer = running.client().chat.completions.create(model=MODEL, messages=user(QUESTIONS[2]), max_tokens=64,
                                                          extra_body={"rain": LONG})
        assert time.monotonic() - started < 30
    assert answer.rain["stopped"] == "time_limit" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == answer.rain["stats"]["new_tokens"]


# ---------------------------------------------------------------------------------------------- pieces

def test_a_single_user_message_gives_the_bare_question_prompt_in_every_format():
    tok = train_tokenizer()
    for fmt in ("fewshot", "chat", "vicuna", "llama2chat", "raw"):
        prompt = PromptConfig(format=fmt)
        assert messages_text(tok, user("Is it safe?"), prompt) == prompt_text(tok, "Is it safe?", prompt)
    vicuna = messages_text(tok, [{"role": "system", "content": "Be brief."}] + user("Hi"), PromptConfig(format="vicuna"))
    assert vicuna == "Be brief. USER: Hi ASSISTANT:"
    with pytest.raises(UnsupportedMessages, match="takes one user message"):
        messages_text(tok, user("a") + [{"role": "assistant", "content": "b"}] + user("c"), PromptConfig())
    chat = messages_text(tok, user("a") + [{"role": "assistant", "content": "b"}] + user("c"),
                         PromptConfig(format="chat", system="S"))
    assert chat.index("S") < chat.index("a") < chat.index("b") < chat.index("c")


def test_streamed_text_stops_short_of_a_stop_string():
    assert visible_text("Hello wor", ("world",)) == ("Hello ", False)
    assert visible_text("Hello world and more", ("world",)) == ("Hello ", True)
    assert visible_text("Hello", ()) == ("Hello", False)
    assert visible_text("caf\ufffd", ()) == ("caf", False)


def test_serve_command_reports_user_errors_in_one_line(capsys):
    from rain.cli import main

    assert main(["serve", "--config", "no/such.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config file not found" in err


def test_the_judge_client_can_use_a_rain_server(server, monkeypatch):
    from rain.judge.client import OpenAIChatClient
    from rain.judge.config import JudgeConfig

    monkeypatch.setenv("RAIN_TEST_KEY", KEY)
    config = JudgeConfig(base_url=f"http://127.0.0.1:{server.port}/v1", model=MODEL, api_key_env="RAIN_TEST_KEY",
                         max_tokens=4, max_retries=0)
    reply = OpenAIChatClient(config).complete(user(QUESTIONS[6]))
    direct = server.client().chat.completions.create(model=MODEL, messages=user(QUESTIONS[6]), max_tokens=4)
    assert reply.text == direct.choices[0].message.content and reply.tokens_out == direct.usage.completion_tokens
