"""The cached engine against the plain recompute reference: same distributions, same search."""

import pytest
import torch

import rain
from rain.decoding import searcher
from rain.lm import CachedEngine, ReferenceEngine, SegmentSpec, common_prefix
from tiny import HashEmbedder

QUESTION = "How do I bake bread?"


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


class RecordingEngine(CachedEngine):
    """A cached engine that keeps every state it hands out."""

    def __init__(self, model):
        super().__init__(model)
        self.seen = []

    def extend(self, state, tokens):
        out = super().extend(state, tokens)
        self.seen.append(out)
        return out


def config(*overrides):
    base = ["max_new_tokens=10", "max_iterations=8", "min_fresh_iterations=3", "trace=true"]
    return rain.load_config(None, base + list(overrides))


def negative(question, answer):
    return -0.5


CASES = {
    "self-evaluation": ((), None),
    "widening": (("widen_variance=10.0", "segment_lengths=[1,2]", "num_candidates=3", "max_iterations=12"), negative),
}


@pytest.mark.parametrize("case", CASES)
def test_cached_search_equals_reference_search(tiny_model, case):
    model, tok = tiny_model
    overrides, evaluator = CASES[case]
    results = {}
    for engine in ("cached", "reference"):
        cfg = config(f"engine={engine}", *overrides)
        results[engine] = rain.rain_generate(model, tok, QUESTION, cfg, seed=3, evaluator=evaluator,
                                             embedder=HashEmbedder())
    fast, ref = results["cached"], results["reference"]
    assert fast.token_ids == ref.token_ids and fast.text == ref.text
    for field in ("inner_iterations", "commits", "rewinds", "judge_calls", "judge_cache_hits", "widenings",
                  "new_tokens", "sampled_tokens"):
        assert getattr(fast.stats, field) == getattr(ref.stats, field), field
    if case == "widening":
        assert fast.stats.widenings > 0
    assert len(fast.trace) == len(ref.trace) == fast.stats.commits
    for a, b in zip(fast.trace, ref.trace):
        assert [c["segment"] for c in a["children"]] == [c["segment"] for c in b["children"]]
        for ca, cb in zip(a["children"], b["children"]):
            assert ca["visits"] == pytest.approx(cb["visits"], abs=1e-6)
            assert ca["value"] == pytest.approx(cb["value"], abs=1e-6)
            assert ca["prior"] == pytest.approx(cb["prior"], abs=1e-4)
    # the point of the cache: far fewer tokens through the model
    assert fast.stats.tokens_fed * 5 < ref.stats.tokens_fed


def test_every_distribution_the_search_sees_matches_a_full_recompute(tiny_model):
    model, tok = tiny_model
    cfg = config()
    engine = RecordingEngine(model)
    reference = ReferenceEngine(model)
    from rain.decoding import _CountingEngine  # the judge's counted view
    from rain.evaluate import SelfEvaluator
    from rain.search import Rain

    searcher_ = Rain(engine, tok, cfg, evaluator=SelfEvaluator(_CountingEngine(engine), tok, cfg.judge),
                     embedder=HashEmbedder())
    searcher_.generate(QUESTION, seed=0)
    assert len(engine.seen) > 10
    for state in engine.seen:
        expected = torch.softmax(reference.state(state.tokens).logits, -1)
        assert torch.allclose(torch.softmax(state.logits, -1), expected, atol=1e-4)


def test_batched_segments_match_one_at_a_time(tiny_model):
    model, tok = tiny_model
    prompt = tuple(rain.prompt_ids(tok, QUESTION, rain.RainConfig().prompt))
    spec = SegmentSpec(length=5, topk=15, temperature=1.0, greedy=True, stop_ids=frozenset({tok.eos_token_id}))
    u = torch.rand(10, 5, generator=torch.Generator().manual_seed(0))
    cached, ref = CachedEngine(model), ReferenceEngine(model)
    rows_c = cached.segments(cached.state(prompt), spec, u)
    rows_r = ref.segments(ref.state(prompt), spec, u)
    assert [s for s, _ in rows_c] == [s for s, _ in rows_r]
    assert [p for _, p in rows_c] == pytest.approx([p for _, p in rows_r], rel=1e-4)
    assert cached.counters.forward_calls == 1 + 4  # one prefill, then one batched step per position


def test_judge_orders_match_separate_passes(tiny_model):
    model, tok = tiny_model
    anchor = tuple(range(5, 40))
    tails = [[60, 61], [62, 63, 64, 65]]
    engine = CachedEngine(model)
    for shared in (anchor + (50, 51, 52),  # the anchor is a prefix
                   anchor[:-2] + (90, 91, 50)):  # differs at the boundary: the anchor's cache is cropped
        fast = engine.last_probs(anchor, shared, tails)
        ref = ReferenceEngine(model).last_probs(anchor, shared, tails)
        assert torch.allclose(fast, ref, atol=1e-5)
    assert engine.anchor_builds["judge"] == 1


def test_judge_prefix_is_prefilled_once_per_process(tiny_model):
    model, tok = tiny_model
    cfg = config("max_new_tokens=4")
    search = searcher(model, tok, cfg, embedder=HashEmbedder())
    first = search.generate(QUESTION, seed=0)
    judge_anchor = search.engine.anchors["judge"]
    second = search.generate("What is the capital of France?", seed=0)
    assert search.engine.anchors["judge"] is judge_anchor
    prefix_len = len(search.evaluator.prefix_ids)
    assert second.stats.judge_calls > 0
    assert second.stats.judge_tokens_fed < prefix_len  # only the judged texts, never the fixed part again
    assert first.stats.judge_tokens_fed >= prefix_len


def test_common_prefix_length():
    assert common_prefix((1, 2, 3), (1, 2, 4, 5)) == 2
    assert common_prefix((1, 2), (1, 2, 3)) == 2
    assert common_prefix((), (1,)) == 0
    assert common_prefix((9, 2), (1, 2)) == 0
