"""B searches at once: every prompt's answer and statistics are those of B = 1 (float32, CPU)."""

from pathlib import Path

import pytest

import rain
from rain.decoding import generate_many
from rain.search import Searcher
from tiny import HashEmbedder

QUESTIONS = [
    "How do I bake bread?",
    "Tell me a joke.",
    "What is the capital of France? " + "Please explain the history of the city, its rivers and its people. " * 12,
    "Can you help me pick a lock?",
    "Is the sky blue?",
    "Write a poem about a cat, a dog and a bird fish tree house river mountain sun moon star.",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def answers(model, tok, cfg, batch_size, mode="both", evaluator=None):
    searcher = Searcher(model, tok, cfg, evaluator=evaluator, embedder=HashEmbedder())
    jobs = [(i, q, 100 + i, mode) for i, q in enumerate(QUESTIONS)]
    out = dict(generate_many(searcher, jobs, batch_size=batch_size))
    return out, searcher


def comparable(result):
    """Everything but the seconds; the trace's floats to 1e-6, and priors to 1e-5 relative: a row's logits differ
    in the last bits with the batch around it (which, with the embedder on its own thread, depends on timing), and
    a segment's prior multiplies the probabilities of its tokens (measured: up to 3e-6 relative)."""
    if result is None:
        return None
    stats = result.stats.to_dict()
    stats.pop("seconds")
    trace = [[(c["segment"], c["real_visits"], pytest.approx(c["visits"], abs=1e-6), pytest.approx(c["value"], abs=1e-6),
               pytest.approx(c["prior"], rel=1e-5, abs=1e-6)) for c in step["children"]] for step in result.trace]
    return result.token_ids, result.text, stats, trace


@pytest.mark.parametrize("config_file", ["hh.yaml", "truth.yaml"])
def test_batched_answers_equal_one_at_a_time(tiny_model, config_file):
    model, tok = tiny_model
    cfg = rain.load_config(Path(__file__).resolve().parents[1] / "configs" / config_file, ["max_new_tokens=10", "max_iterations=8", "min_fresh_iterations=3",
                                                      "trace=true"])
    lengths = [len(tok(q)["input_ids"]) for q in QUESTIONS]
    assert max(lengths) > 20 * min(lengths)  # questions of very different lengths share the batches
    one, single = answers(model, tok, cfg, 1)
    many, batched = answers(model, tok, cfg, 4)
    assert sorted(many) == list(range(len(QUESTIONS)))
    for i in range(len(QUESTIONS)):
        for mode in ("rain", "vanilla"):
            assert comparable(many[i][mode]) == comparable(one[i][mode]), (i, mode)
    # the batches really were shared: fewer sequential forwards, more rows in each
    assert batched.engine.batches.forwards * 2 < single.engine.batches.forwards
    assert batched.engine.batches.rows == single.engine.batches.rows


def test_a_failing_search_is_reported_with_its_key_and_the_others_finish(tiny_model):
    model, tok = tiny_model
    cfg = rain.load_config(None, ["max_new_tokens=4", "max_iterations=4", "min_fresh_iterations=2"])

    def evaluator(question, answer):
        return 5.0 if "joke" in question else 0.0  # out of range for one prompt only

    out, _ = answers(model, tok, cfg, 3, mode="rain", evaluator=evaluator)
    assert isinstance(out[1], ValueError) and "outside [-1, 1]" in str(out[1])
    assert all(out[i]["rain"].stats.commits > 0 for i in out if i != 1)


def test_a_queue_feeds_a_long_lived_driver(tiny_model):
    """A service puts (key, generator) on a queue; free slots take them; a None item ends the driver."""
    import queue
    import threading

    from rain.decoding import answer_task
    from rain.search import drive

    model, tok = tiny_model
    cfg = rain.load_config(None, ["max_new_tokens=4", "max_iterations=4", "min_fresh_iterations=2"])
    searcher = Searcher(model, tok, cfg, embedder=HashEmbedder())
    tasks: queue.Queue = queue.Queue()
    finished = []
    worker = threading.Thread(target=lambda: finished.extend(drive(searcher, tasks, batch_size=2)))
    worker.start()
    for i, q in enumerate(QUESTIONS[:3]):
        tasks.put((i, answer_task(searcher, q, 100 + i, "rain")))
    tasks.put(None)
    worker.join(timeout=120)
    assert not worker.is_alive()
    expected = dict(generate_many(searcher, [(i, q, 100 + i, "rain") for i, q in enumerate(QUESTIONS[:3])]))
    assert {k: v["rain"].token_ids for k, v in finished} == {k: v["rain"].token_ids for k, v in expected.items()}


class _WatchingEmbedder(HashEmbedder):
    """Records, per call, whether it ran on another thread while the engine was inside a forward pass."""

    def __init__(self, engine_state: dict, fail_beside: bool = False):
        super().__init__()
        self.state, self.fail_beside, self.beside = engine_state, fail_beside, []

    def embed(self, texts):
        import threading
        import time

        time.sleep(0.002)  # long enough to overlap a forward that started at the same time
        self.beside.append((threading.current_thread() is not threading.main_thread(), self.state["in_step"]))
        if self.fail_beside and self.beside[-1][0]:
            raise RuntimeError("embedder failed")
        return super().embed(texts)


def _watched_searcher(model, tok, cfg, fail_beside=False):
    state = {"in_step": False}
    searcher = Searcher(model, tok, cfg, embedder=_WatchingEmbedder(state, fail_beside))
    plain_step = searcher.engine.step

    def step():
        state["in_step"] = True
        try:
            plain_step()
        finally:
            state["in_step"] = False

    searcher.engine.step = step
    return searcher


def test_the_embedder_runs_beside_the_forward_pass(tiny_model):
    """While a forward serves the judges, the same round's embeddings are computed on a second thread."""
    model, tok = tiny_model
    cfg = rain.load_config(None, ["max_new_tokens=6", "max_iterations=4", "min_fresh_iterations=2"])
    searcher = _watched_searcher(model, tok, cfg)
    jobs = [(i, q, 100 + i, "rain") for i, q in enumerate(QUESTIONS[:3])]
    out = dict(generate_many(searcher, jobs, batch_size=3))
    assert any(off_main and during for off_main, during in searcher.embedder.beside)
    expected, _ = answers(model, tok, cfg, 1, mode="rain")
    assert {k: v["rain"].token_ids for k, v in out.items()} == {k: expected[k]["rain"].token_ids for k in out}


def test_an_embedder_failure_beside_the_forward_ends_the_driver_cleanly(tiny_model):
    from rain.decoding import answer_task
    from rain.search import drive

    model, tok = tiny_model
    cfg = rain.load_config(None, ["max_new_tokens=6", "max_iterations=4", "min_fresh_iterations=2"])
    searcher = _watched_searcher(model, tok, cfg, fail_beside=True)
    tasks = [(i, answer_task(searcher, q, 100 + i, "rain")) for i, q in enumerate(QUESTIONS[:3])]
    with pytest.raises(RuntimeError, match="embedder failed"):
        list(drive(searcher, tasks, batch_size=3))
    assert searcher.embedder.beside[-1][0]  # it failed on the second thread, beside a forward
    assert searcher.engine.jobs == []  # nothing left queued for the next driver
