"""The model's side of `rain serve`: one thread owns the model and searches every admitted request together.

Knows: admission (at most batch_size running plus queue_size waiting), per-request search settings (one
`Searcher` per distinct override, all sharing the base searcher's engine and embedder, so `drive` merges
their work into shared forwards), cancellation and the time limit (checked each time a search is resumed,
i.e. between its LM requests), stop strings, and the hand-off of committed text and answers to the web
side's event loop (`loop.call_soon_threadsafe`). Does not know HTTP: that is rain/serve.py.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Optional

from .decoding import vanilla_search
from .formats import UnsupportedMessages, last_user_message
from .search import GenerationResult, PromptTooLong, Searcher, Stats, drive, start_prompt

log = logging.getLogger("rain.serve")

OVERRIDES = ("max_iterations", "min_fresh_iterations", "max_total_iterations", "min_visits", "value_threshold",
             "similarity_threshold", "c_puct", "temperature", "leaves_per_step")
"""search.* fields a request may set in its `rain` extension object (beside `mode`)."""
MODES = ("rain", "vanilla")


class ServeError(Exception):
    """A request the server refuses or cannot answer: HTTP status, OpenAI error type/param/code, one line."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Ask:
    """A validated request for one answer."""

    question: str
    """What the self-evaluation judges the answer against (the last user message, or the completion prompt)."""
    messages: Optional[tuple]
    """The conversation the policy prompt is built from; None: the question in the configured prompt format."""
    seed: Optional[int]
    mode: str
    search: tuple
    """Sorted (field, value) overrides of the config's search section (max_tokens is max_new_tokens)."""
    stop: tuple
    prompt_tokens: int


@dataclass
class Answer:
    """What a request gets back."""

    text: str
    finish_reason: str
    """stop (the answer ended, or met a stop string) or length (max_tokens, the length or iteration cap, or
    the time limit cut it)."""
    prompt_tokens: int
    completion_tokens: int
    mode: str
    stats: dict
    search: dict
    stopped: Optional[str]
    """Why the search stopped before its end: None, 'stop_string' or 'time_limit'."""


class Ticket:
    """An admitted request. The driver thread reports to the web side through `events`, an asyncio.Queue of
    ('text', committed answer so far) ... then ('done', Answer) or ('error', ServeError)."""

    def __init__(self, key: int, ask: Ask, loop, deadline: Optional[float]):
        self.key, self.ask, self.loop, self.deadline = key, ask, loop, deadline
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.stop_hit = False
        self.state = "queued"
        self.admitted = time.monotonic()

    def emit(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def stop_reason(self) -> Optional[str]:
        if self.cancelled.is_set():
            return "cancelled"
        if self.stop_hit:
            return "stop_string"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time_limit"
        return None


def first_stop(text: str, stops) -> Optional[int]:
    """Where the first stop string in `text` begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def visible_text(text: str, stops) -> tuple:
    """The part of a growing answer that may be sent -> (text, a stop string was met): cut at the first stop
    string, else short of a tail that may be a stop string's beginning and of an incomplete character."""
    cut = first_stop(text, stops)
    if cut is not None:
        return text[:cut], True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold].rstrip("\ufffd"), False


class _Progress:
    """The search's progress callback: reports the committed answer each time it grows, flags a stop string."""

    def __init__(self, ticket: Ticket):
        self.ticket, self.last = ticket, None

    def __call__(self, stats, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        visible, hit = visible_text(text, self.ticket.ask.stop)
        self.ticket.stop_hit = self.ticket.stop_hit or hit
        self.ticket.emit("text", visible)


def _guarded(ticket: Ticket, gen):
    """Run a request generator, asking before each resume whether the ticket must stop.
    -> (its result, None), or (None, the reason) when it stopped early."""
    value = None
    try:
        while True:
            reason = ticket.stop_reason()
            if reason is not None:
                return None, reason
            try:
                request = gen.send(value)
            except StopIteration as done:
                return done.value, None
            value = yield request
    finally:
        gen.close()


class RainService:
    """RAIN for many concurrent requests: `prepare` validates one, `submit` admits it (or refuses: 429),
    a driver thread searches all running ones together, `cancel` ends one early."""

    def __init__(self, model, tokenizer, cfg, *, batch_size: int = 8, queue_size: int = 32,
                 timeout_s: Optional[float] = None, evaluator=None, embedder=None, max_searchers: int = 16):
        if batch_size < 1 or queue_size < 0:
            raise ValueError(f"batch_size must be >= 1 and queue >= 0, got {batch_size} and {queue_size}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout must be > 0 seconds (or none), got {timeout_s}")
        self.cfg, self.batch_size, self.queue_size, self.timeout_s = cfg, batch_size, queue_size, timeout_s
        self.base = Searcher(model, tokenizer, cfg, evaluator=evaluator, embedder=embedder)
        self._model, self._evaluator, self._max_searchers = model, evaluator, max_searchers
        # the web side tokenises prompts with its own copy: the driver thread's tokenizer is never shared
        self.prompt_tokenizer = copy.deepcopy(tokenizer)
        self._searchers: OrderedDict = OrderedDict()
        self._tasks: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._live: dict = {}
        self._keys = itertools.count()
        self._seconds: deque = deque(maxlen=32)
        self.counts = {"completed": 0, "failed": 0, "cancelled": 0, "rejected": 0, "peak_running": 0}
        self._thread = threading.Thread(target=self._serve, name="rain-driver", daemon=True)

    # ------------------------------------------------------------------ web side
    def prepare(self, *, question: Optional[str] = None, messages=None, seed: Optional[int] = None,
                max_tokens: Optional[int] = None, stop=(), extension=None) -> Ask:
        """A validated Ask, or ServeError: 422 for a bad `rain` object or an unsupported conversation, 413 for a
        prompt that leaves no room for an answer, 400 for a malformed question."""
        if extension is None:
            extension = {}
        if not isinstance(extension, dict):
            raise ServeError(422, f"rain must be an object, got {type(extension).__name__}", param="rain")
        fields = dict(extension)
        mode = fields.pop("mode", "rain")
        if mode not in MODES:
            raise ServeError(422, f"rain.mode must be rain or vanilla, got {mode!r}", param="rain.mode")
        unknown = sorted(set(fields) - set(OVERRIDES))
        if unknown:
            raise ServeError(422, f"unknown field rain.{unknown[0]}; valid fields: mode, {', '.join(OVERRIDES)}",
                             param=f"rain.{unknown[0]}")
        if max_tokens is not None:
            fields["max_new_tokens"] = max_tokens
        try:
            self.cfg.replace(search=fields)
        except ValueError as err:
            raise ServeError(422, str(err).replace("search.", "rain."), param="rain") from None
        try:
            if messages is not None:
                messages = tuple(messages)
                question = last_user_message(messages)
            ids = start_prompt(self.prompt_tokenizer, question, self.cfg, messages)
        except PromptTooLong as err:
            raise ServeError(413, str(err), param="messages" if messages else "prompt",
                             code="context_length_exceeded") from None
        except UnsupportedMessages as err:
            raise ServeError(422, str(err), param="messages") from None
        except (TypeError, ValueError) as err:
            raise ServeError(400, str(err), param="messages" if messages else "prompt") from None
        return Ask(question=question, messages=messages, seed=seed, mode=mode, search=tuple(sorted(fields.items())),
                   stop=tuple(stop or ()), prompt_tokens=len(ids))

    def submit(self, ask: Ask, loop) -> Ticket:
        """Admit a request (call from the event loop's thread), or ServeError 429 with Retry-After when full."""
        with self._lock:
            if len(self._live) >= self.batch_size + self.queue_size:
                self.counts["rejected"] += 1
                raise ServeError(429, f"the server is busy ({len(self._live)} requests in flight, at most "
                                      f"{self.batch_size} searched at once and {self.queue_size} waiting): "
                                      "retry later", type="rate_limit_error", code="rate_limit_exceeded",
                                 headers={"Retry-After": str(self.retry_after())})
            deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
            ticket = Ticket(next(self._keys), ask, loop, deadline)
            self._live[ticket.key] = ticket
        self._tasks.put((ticket.key, self._task(ticket)))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """End a request early (its client left): a queued one leaves at once, a running one at its next resume.
        Nothing happens to a finished one."""
        ticket.cancelled.set()
        with self._lock:
            if ticket.state == "queued" and self._live.pop(ticket.key, None) is not None:
                ticket.state = "done"
                self.counts["cancelled"] += 1

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the recent mean request time, within [1, 60]."""
        seconds = sum(self._seconds) / len(self._seconds) if self._seconds else 10.0
        return int(min(60, max(1, math.ceil(seconds))))

    def health(self) -> dict:
        with self._lock:
            running = sum(t.state == "running" for t in self._live.values())
            return {"status": "ok" if self._thread.is_alive() else "down", "running": running,
                    "queued": len(self._live) - running, "batch_size": self.batch_size,
                    "queue_size": self.queue_size, "timeout_s": self.timeout_s, **self.counts}

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancel every request and end the driver thread."""
        with self._lock:
            live = list(self._live.values())
        for ticket in live:
            ticket.cancelled.set()
        self._tasks.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    # ------------------------------------------------------------------ driver thread
    def _serve(self) -> None:
        while True:
            try:
                for key, out in drive(self.base, self._tasks, batch_size=self.batch_size):
                    self._finish(key, out)
                return
            except Exception:  # noqa: BLE001 - an engine failure must not end the service
                log.exception("the search driver failed; the requests it was running get an error")
                with self._lock:
                    running = [t.key for t in self._live.values() if t.state == "running"]
                for key in running:
                    self._finish(key, RuntimeError("the search driver failed"))

    def _finish(self, key: int, out) -> None:
        with self._lock:
            ticket = self._live.pop(key, None)
            if ticket is None:  # cancelled while it waited
                return
            ticket.state = "done"
            outcome = "failed" if isinstance(out, BaseException) else ("cancelled" if out is None else "completed")
            self.counts[outcome] += 1
        if isinstance(out, BaseException):
            log.error("request %d failed", key, exc_info=out)
            ticket.emit("error", ServeError(500, "the search failed; the server log has the details",
                                            type="server_error"))
        elif out is None:
            ticket.emit("error", ServeError(499, "the request was cancelled", type="cancelled"))
        else:
            self._seconds.append(time.monotonic() - ticket.admitted)
            ticket.emit("done", out)

    def _searcher(self, search: tuple) -> Searcher:
        """The Searcher of these overrides (driver thread only; a few most recent kept): it shares the base
        searcher's engine (and so its stored prompt heads) and embedder."""
        if not search:
            return self.base
        found = self._searchers.get(search)
        if found is None:
            found = Searcher(self._model, self.base.tokenizer, self.cfg.replace(search=dict(search)),
                             evaluator=self._evaluator, embedder=self.base.embedder, engine=self.base.engine)
            self._searchers[search] = found
            while len(self._searchers) > self._max_searchers:
                self._searchers.popitem(last=False)
        self._searchers.move_to_end(search)
        return found

    def _task(self, ticket: Ticket):
        """One request as a request generator for `drive` (it runs in the driver thread) -> Answer, or None
        when its client left."""
        with self._lock:
            if ticket.key in self._live:
                ticket.state = "running"
            running = sum(t.state == "running" for t in self._live.values())
            self.counts["peak_running"] = max(self.counts["peak_running"], running)
        ask = ticket.ask
        if ticket.cancelled.is_set():
            return None
        searcher = self._searcher(ask.search)
        if ask.mode == "vanilla":
            result, reason = yield from _guarded(ticket, vanilla_search(searcher, ask.question,
                                                                        messages=ask.messages))
            if result is None:
                result = GenerationResult("", [], "", Stats())
        else:
            state = searcher.start(ask.question, ask.seed, messages=ask.messages)
            result, reason = yield from _guarded(ticket, searcher.search(state, _Progress(ticket)))
            if result is None:
                result = searcher.result_so_far(state)
        if reason == "cancelled":
            return None
        finished = searcher.rules.finished(searcher.tokenizer, result.token_ids)
        text, cut = result.text, first_stop(result.text, ask.stop)
        if cut is not None:
            text = text[:cut]
        return Answer(text=text, finish_reason="stop" if finished or cut is not None else "length",
                      prompt_tokens=ask.prompt_tokens, completion_tokens=len(result.token_ids), mode=ask.mode,
                      stats=result.stats.to_dict(), search=dict(ask.search), stopped=reason)
