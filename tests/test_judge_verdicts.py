"""Prompt parsing and the Judge: parse retries, unparseable records, de-duplication, concurrency."""

import threading

import pytest

from rain.judge import prompts
from rain.judge.cache import VerdictCache
from rain.judge.client import ChatReply
from rain.judge.verdicts import Judge, Question


class ScriptedBackend:
    """Replies from a function of the user message; counts calls; thread-safe."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def complete(self, messages):
        content = messages[-1]["content"]
        with self._lock:
            self.calls.append(content)
            count = len(self.calls)
        return ChatReply(text=self.reply(content, count))


@pytest.mark.parametrize("reply, value", [
    ("The reply refuses.\nVerdict: HARMLESS", True),
    ("Verdict: **HARMFUL**", False),
    ("verdict - harmless", True),
    ("Verdict: [HARMFUL]", False),
    ("It is harmless.", None),
    ("Verdict: HARMLESS\nVerdict: HARMFUL", None),
    ("Verdict: HARMLESS. Final Verdict: HARMLESS", True),
    ("Verdict: MAYBE", None),
])
def test_verdict_line_parsing_never_guesses(reply, value):
    assert prompts.HH_HARMLESS.parse(reply) is value


def test_unhelpful_is_not_read_as_helpful():
    assert prompts.HH_HELPFUL.parse("Verdict: UNHELPFUL") is False
    assert prompts.HH_HELPFUL.parse("Verdict: HELPFUL") is True


def test_first_word_templates_read_guard_and_truthfulqa_replies():
    assert prompts.GUARD_HARMLESS.parse("\n\nunsafe\nS2") is False
    assert prompts.GUARD_HARMLESS.parse("safe") is True
    assert prompts.GUARD_JAILBROKEN.parse("unsafe\nS1") is True
    assert prompts.ALLENAI_TRUTHFUL.parse(" yes") is True
    assert prompts.ALLENAI_INFORMATIVE.parse(" no.") is False
    assert prompts.ALLENAI_TRUTHFUL.parse(" perhaps") is None


def test_render_fills_every_field_and_guard_uses_a_dialogue():
    messages = prompts.HH_HARMLESS.render({"question": "Q?", "answer": "A."})
    assert messages[0]["role"] == "system" and "[Request]\nQ?" in messages[1]["content"]
    assert "[Reply]\nA." in messages[1]["content"]
    guard = prompts.GUARD_HARMLESS.render({"question": "Q?", "answer": "A."})
    assert guard == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    truth = prompts.ALLENAI_TRUTHFUL.render({"question": "Q?", "answer": "A."})
    assert truth == [{"role": "user", "content": "Q: Q?\nA: A.\nTrue:"}]


def test_malformed_replies_are_retried_then_recorded_unparseable():
    backend = ScriptedBackend(lambda content, n: "I think it is fine")
    cache = VerdictCache(None)
    judge = Judge(backend=backend, cache=cache, parse_retries=2)
    [verdict] = judge.judge_all([Question.of(prompts.HH_HARMLESS, question="q", answer="a")])
    assert len(backend.calls) == 3
    assert verdict.value is None and verdict.unparseable and verdict.raw == "I think it is fine"
    assert len(cache) == 1


def test_a_retry_that_parses_is_kept():
    backend = ScriptedBackend(lambda content, n: "hmm" if n == 1 else "Verdict: HARMFUL")
    judge = Judge(backend=backend, cache=VerdictCache(None), parse_retries=2)
    [verdict] = judge.judge_all([Question.of(prompts.HH_HARMLESS, question="q", answer="a")])
    assert verdict.value is False and not verdict.unparseable
    assert len(backend.calls) == 2


def test_identical_questions_are_asked_once_and_answered_in_order():
    backend = ScriptedBackend(lambda content, n: "Verdict: HARMFUL" if "bad" in content else "Verdict: HARMLESS")
    judge = Judge(backend=backend, cache=VerdictCache(None), concurrency=4)
    answers = ["bad", "good", "bad", "good", "other"]
    verdicts = judge.judge_all([Question.of(prompts.HH_HARMLESS, question="q", answer=a) for a in answers])
    assert [v.value for v in verdicts] == [False, True, False, True, True]
    assert len(backend.calls) == 3 and judge.asked == 3


def test_concurrent_judging_loses_and_duplicates_nothing(tmp_path):
    backend = ScriptedBackend(lambda content, n: "Verdict: HARMFUL" if "odd" in content else "Verdict: HARMLESS")
    cache = VerdictCache(tmp_path / "c.jsonl")
    judge = Judge(backend=backend, cache=cache, concurrency=8)
    answers = [f"answer {i} {'odd' if i % 2 else 'even'}" for i in range(60)]
    verdicts = judge.judge_all([Question.of(prompts.HH_HARMLESS, question="q", answer=a) for a in answers])
    assert [v.value for v in verdicts] == [i % 2 == 0 for i in range(60)]
    assert len(backend.calls) == 60 and len(set(backend.calls)) == 60
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 60


def test_cached_verdicts_are_not_asked_again_and_unparseable_only_on_request(tmp_path):
    path = tmp_path / "c.jsonl"
    first = ScriptedBackend(lambda content, n: "no idea" if "x" in content else "Verdict: HARMLESS")
    questions = [Question.of(prompts.HH_HARMLESS, question="q", answer=a) for a in ("x", "y")]
    Judge(backend=first, cache=VerdictCache(path), parse_retries=0).judge_all(questions)
    second = ScriptedBackend(lambda content, n: "Verdict: HARMFUL")
    verdicts = Judge(backend=second, cache=VerdictCache(path)).judge_all(questions)
    assert second.calls == [] and all(v.cached for v in verdicts)
    retried = Judge(backend=second, cache=VerdictCache(path), retry_unparseable=True).judge_all(questions)
    assert len(second.calls) == 1 and [v.value for v in retried] == [False, True]


def test_backend_failure_propagates_after_finished_verdicts_are_cached(tmp_path):
    def reply(content, n):
        if "boom" in content:
            raise RuntimeError("endpoint died")
        return "Verdict: HARMLESS"

    path = tmp_path / "c.jsonl"
    judge = Judge(backend=ScriptedBackend(reply), cache=VerdictCache(path), concurrency=1)
    questions = [Question.of(prompts.HH_HARMLESS, question="q", answer=a) for a in ("fine", "boom")]
    with pytest.raises(RuntimeError, match="endpoint died"):
        judge.judge_all(questions)
    assert len(VerdictCache(path)) == 1


def test_truth_references_list_best_correct_and_incorrect_answers():
    record = {"best_answer": "No", "correct_answers": ["No", "Not visible"], "incorrect_answers": "Yes; Easily"}
    notes = prompts.truth_references(record)
    assert notes.splitlines() == ["- Best answer: No", "- Also correct: No", "- Also correct: Not visible",
                                  "- Incorrect (misconception): Yes", "- Incorrect (misconception): Easily"]
    assert prompts.truth_references({}) == "(none)"
