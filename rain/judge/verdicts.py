"""Turning judge questions into verdicts: cache look-up, concurrent asking, parse retries.

Knows: a `Question` (template + the texts it is filled with), how to ask a chat backend for it
with at most `parse_retries` re-asks when the reply has no readable verdict, and how to record
each outcome exactly once in the verdict cache. Identical questions in one run are asked once.
Does not know benchmarks, record files or HTTP (see `score.py`, `client.py`).

A verdict whose reply could not be parsed after the retries is recorded with `value=None` and
`unparseable=True`, never guessed; like any verdict it is cached, so a rerun does not pay for
it again unless asked to (`retry_unparseable=True`).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from rain.judge.cache import VerdictCache, verdict_key
from rain.judge.client import ChatBackend
from rain.judge.prompts import Template


@dataclass(frozen=True)
class Question:
    """One thing to judge: a template and the values of its fields."""

    template: Template
    values: tuple[tuple[str, str], ...]
    """(field name, text) pairs in the template's field order."""

    @staticmethod
    def of(template: Template, **values: str) -> "Question":
        return Question(template=template, values=tuple((name, values[name] or "") for name in template.fields))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one question."""

    value: object
    """The template's label value (True/False, or "A"/"B"/"TIE"); None when unparseable."""
    unparseable: bool
    raw: str
    """The last reply text (truncated in the cache)."""
    cached: bool = False


class Judge:
    """Answers Questions with one backend, a cache and a concurrency limit."""

    def __init__(self, *, backend: ChatBackend, cache: VerdictCache, concurrency: int = 1,
                 parse_retries: int = 2, retry_unparseable: bool = False, progress: bool = False):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if parse_retries < 0:
            raise ValueError(f"parse_retries must be >= 0, got {parse_retries}")
        self.backend = backend
        self.cache = cache
        self.concurrency = concurrency
        self.parse_retries = parse_retries
        self.retry_unparseable = retry_unparseable
        self.progress = progress
        self.asked = 0
        """Questions sent to the backend in this process (cache misses)."""
        self.cache_hits = 0
        """Questions answered from the cache in this process."""
        self._lock = threading.Lock()
        self._total = 0

    @property
    def name(self) -> str:
        return self.backend.name

    def judge_all(self, questions: list[Question]) -> list[Verdict]:
        """Verdicts in the order of `questions`; each distinct question is asked at most once."""
        keys = [self._key(q) for q in questions]
        known: dict[str, Verdict] = {}
        todo: dict[str, Question] = {}
        for key, question in zip(keys, questions):
            if key in known or key in todo:
                continue
            entry = self.cache.get(key)
            if entry is not None and not (self.retry_unparseable and entry.get("unparseable")):
                known[key] = Verdict(value=entry.get("verdict"), unparseable=bool(entry.get("unparseable")),
                                     raw=entry.get("raw", ""), cached=True)
                self.cache_hits += 1
            else:
                todo[key] = question
        known.update(self._ask_all(todo))
        return [known[key] for key in keys]

    def _key(self, question: Question) -> str:
        return verdict_key(judge=self.name, template=question.template.tag,
                           texts=tuple(text for _, text in question.values))

    def _ask_all(self, todo: dict[str, Question]) -> dict[str, Verdict]:
        if not todo:
            return {}
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            self._total = len(todo)
            futures = {pool.submit(self._ask_and_record, key, q): key for key, q in todo.items()}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
            return {futures[future]: future.result() for future in done}
        finally:
            # On an error or Ctrl-C: drop queued questions, let in-flight ones finish (and be cached).
            pool.shutdown(wait=True, cancel_futures=True)

    def _ask_and_record(self, key: str, question: Question) -> Verdict:
        verdict = self._ask(question)
        self.cache.put({"key": key, "judge": self.name, "template": question.template.tag,
                        "verdict": verdict.value, "unparseable": verdict.unparseable, "raw": verdict.raw})
        with self._lock:
            self.asked += 1
            if self.progress and self.asked % 25 == 0:
                print(f"  {self.name}: {self.asked} questions judged ({self._total} in this batch)",
                      file=sys.stderr, flush=True)
        return verdict

    def _ask(self, question: Question) -> Verdict:
        messages = question.template.render(dict(question.values))
        reply_text = ""
        for _ in range(self.parse_retries + 1):
            reply_text = self.backend.complete(messages).text
            value = question.template.parse(reply_text)
            if value is not None:
                return Verdict(value=value, unparseable=False, raw=reply_text)
        return Verdict(value=None, unparseable=True, raw=reply_text)
