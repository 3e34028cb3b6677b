"""The cached engine against the plain recompute reference: same distributions, same search, and the
shared-prefix attention against the plain forward pass."""

import pytest
import torch

import rain
from rain.attention import Past, Row, Segment, forward_rows, plan_forward
from rain.lm import CachedEngine, Counters, Expand, Judge, Prefill, ReferenceEngine, Rollout
from rain.sampling import Draw, SegmentSpec, common_prefix, draw_all, pick_tokens, sample_full, \
    topk_distribution
from rain.search import Searcher
from tiny import EosBoost, HashEmbedder

QUESTION = "How do I bake bread?"


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def config(*overrides):
    base = ["max_new_tokens=10", "max_iterations=8", "min_fresh_iterations=3", "trace=true"]
    return rain.load_config(None, base + list(overrides))


def negative(question, answer):
    return -0.5


CASES = {
    "self-evaluation": ((), None, None),
    "widening": (("widen_variance=10.0", "segment_lengths=[1,2]", "num_candidates=3", "max_iterations=12"), negative,
                 None),
    # EOS at moderate probability everywhere: candidate rows and rollouts end inside segments
    "eos-inside-segments": (("segment_lengths=[1,4,6]", "max_new_tokens=16"), None, 2.0),
}


@pytest.mark.parametrize("case", CASES)
def test_cached_search_equals_reference_search(tiny_model, case):
    model, tok = tiny_model
    overrides, evaluator, eos_boost = CASES[case]
    if eos_boost is not None:
        model = EosBoost(model, eos_id=tok.eos_token_id, boost=eos_boost)
    results = {}
    for engine in ("cached", "reference"):
        cfg = config(f"engine={engine}", *overrides)
        results[engine] = rain.rain_generate(model, tok, QUESTION, cfg, seed=3, evaluator=evaluator,
                                             embedder=HashEmbedder())
    fast, ref = results["cached"], results["reference"]
    assert fast.token_ids == ref.token_ids and fast.text == ref.text
    for field in ("inner_iterations", "commits", "non_greedy_commits", "judge_calls", "judge_cache_hits", "widenings",
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


def test_eos_case_really_ends_rows_inside_segments(tiny_model):
    """The EOS case above would not notice a cached engine that ignores EOS inside rows unless EOS is drawn there."""
    model, tok = tiny_model
    boosted = EosBoost(model, eos_id=tok.eos_token_id, boost=2.0)
    engine = CachedEngine(boosted)
    prompt = tuple(rain.prompt_ids(tok, QUESTION, rain.RainConfig().prompt))
    ctx = engine.run(Prefill(prompt, Counters()))
    spec = SegmentSpec(length=6, topk=15, temperature=1.0, greedy=True, stop_ids=frozenset({tok.eos_token_id}))
    rows = engine.run(Expand(ctx, Counters(), spec, torch.rand(10, 6, generator=torch.Generator().manual_seed(1)))).rows
    ended_early = [seg for seg, _ in rows if seg[-1] == tok.eos_token_id and len(seg) < 6]
    assert ended_early, rows


class RecordingEngine(CachedEngine):
    """A cached engine that keeps every context it computes."""

    def __init__(self, model):
        super().__init__(model)
        self.seen = []

    def submit(self, request):
        job = super().submit(request)
        if isinstance(request, Prefill):
            self.seen.append(job)
        return job


def test_every_distribution_the_search_sees_matches_a_full_recompute(tiny_model):
    model, tok = tiny_model
    engine = RecordingEngine(model)
    Searcher(model, tok, config(), embedder=HashEmbedder(), engine=engine).generate(QUESTION, seed=0)
    reference = ReferenceEngine(model)
    assert len(engine.seen) > 10
    for job in engine.seen:
        ctx = job.result
        expected = torch.softmax(reference.run(Prefill(ctx.tokens, Counters())).logits, -1)
        assert torch.allclose(torch.softmax(ctx.logits, -1), expected, atol=1e-5)


def test_candidate_rows_and_rollout_match_one_at_a_time(tiny_model):
    model, tok = tiny_model
    prompt = tuple(rain.prompt_ids(tok, QUESTION, rain.RainConfig().prompt))
    spec = SegmentSpec(length=5, topk=15, temperature=1.0, greedy=True, stop_ids=frozenset({tok.eos_token_id}))
    u = torch.rand(10, 5, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, engine in (("cached", CachedEngine(model)), ("reference", ReferenceEngine(model))):
        ctx = engine.run(Prefill(prompt, Counters()))
        rollout = Rollout(7, lambda new: False, torch.Generator().manual_seed(5))
        counters = Counters()
        out[name] = (engine.run(Expand(ctx, counters, spec, u, rollout)), counters, engine)
    (fast, fast_counts, cached), (ref, ref_counts, _) = out["cached"], out["reference"]
    assert [s for s, _ in fast.rows] == [s for s, _ in ref.rows]
    assert [p for _, p in fast.rows] == pytest.approx([p for _, p in ref.rows], rel=1e-4)
    assert fast.rollout == ref.rollout and len(fast.rollout) == 7
    assert fast_counts.sampled_tokens == ref_counts.sampled_tokens
    # the rollout rides in the candidate rows' forwards: max(4, 6) steps, not 4 + 6
    assert fast_counts.forward_calls == 6
    assert cached.batches.rows == 1 + 4 * 11 + 2  # prefill row, 4 steps of 10 rows + rollout, then rollout alone


def test_judge_orders_match_separate_passes(tiny_model):
    model, tok = tiny_model
    engine = CachedEngine(model)
    head = engine.share(tuple(range(5, 40)))
    tails = [[60, 61], [62, 63, 64, 65]]
    previous = None
    for shared in (head.tokens + (50, 51, 52),  # the head is a prefix
                   head.tokens[:-2] + (90, 91, 50),  # differs at the boundary: the head is cropped (a view)
                   head.tokens + (50, 51, 53, 54)):  # reuses the previous judgement's text, cropped
        fast = engine.run(Judge(shared, tails, Counters(), reuse=(previous,)))
        ref = ReferenceEngine(model).run(Judge(shared, tails, Counters()))
        assert torch.allclose(fast.probs, ref.probs, atol=1e-6)
        previous = fast.context
    assert len(engine.heads) == 1


@pytest.mark.parametrize("fold", [0, 64, 10_000])
def test_shared_prefix_attention_matches_the_plain_forward(tiny_model, monkeypatch, fold):
    """Rows of every kind in one packed forward: a chain of stored segments, a row with its own past, a parent
    row and its children, a row without prefix, a cropped segment; segments attended in place, folded into
    the private keys (at most FOLD tokens), and both."""
    monkeypatch.setattr(rain.attention, "FOLD", fold)
    model, _ = tiny_model

    def plain(ids):
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()

    def stored(ids, base=()):
        logits, (keys, values) = forward_rows(model, [Row(base=base, tokens=list(ids))])
        return Segment(keys, values, base[-1].end if base else 0, tuple(ids)), logits[0]

    head, mid, a = list(range(5, 105)), list(range(105, 120)), [130, 131]
    s1, logits = stored(head)
    assert torch.allclose(logits, plain(head), atol=1e-5)
    s2, logits = stored(mid, (s1,))
    assert torch.allclose(logits, plain(head + mid), atol=1e-5)
    _, (keys, values) = forward_rows(model, [Row(base=(s1, s2), tokens=a), Row(base=(s1, s2), tokens=[70])])
    past = Past(keys, values, [0, 0, 1])  # row 0 owns the first two keys, row 1 the third
    rows = [Row(base=(s1, s2), tokens=[90], past=past, past_id=0, past_len=2),
            Row(base=(s1, s2), tokens=[91], past=past, past_id=1, past_len=1),
            Row(base=(s1,), tokens=[91, 92, 93], want_logits=False),
            Row(base=(s1,), tokens=[94, 95], parent=2),
            Row(base=(s1,), tokens=[96], parent=2),
            Row(base=(), tokens=[7, 8, 9]),
            Row(base=(s1.crop(20),), tokens=[40, 41]),
            Row(base=(s1, s2), tokens=[77])]  # s1 and s2 are read by rows that are not consecutive
    logits, _ = forward_rows(model, rows)
    expected = [plain(head + mid + a + [90]), plain(head + mid + [70, 91]), plain(head + [91, 92, 93, 94, 95]),
                plain(head + [91, 92, 93, 96]),
                plain([7, 8, 9]), plain(head[:20] + [40, 41]), plain(head + mid + [77])]
    assert len(logits) == len(expected)
    for got, want in zip(logits, expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_rows_sharing_a_prefix_attend_to_one_stored_copy():
    seg = Segment([torch.zeros(2, 100, 8)], [torch.zeros(2, 100, 8)], 0, tuple(range(100)))
    other = Segment([torch.zeros(2, 100, 8)], [torch.zeros(2, 100, 8)], 0, tuple(range(100)))
    short = Segment([torch.zeros(2, 5, 8)], [torch.zeros(2, 5, 8)], 100, tuple(range(5)))
    rows = [Row(base=(seg,), tokens=[1]) for _ in range(10)] + [Row(base=(other, short), tokens=[2, 3]),
                                                                  Row(base=(seg,), tokens=[4])]

    def readers(sel):  # the packed token indices a group's segment is read by
        return list(range(sel.start, sel.stop)) if isinstance(sel, slice) else sel.tolist()

    _, _, _, plan = plan_forward(rows, "cpu")
    assert [g[0] for g in plan.groups] == [seg, other]
    assert readers(plan.groups[0][1]) == list(range(10)) + [12]  # every row's token reads that one segment
    assert readers(plan.groups[1][1]) == [10, 11]
    # the private part is the rows' own tokens and the one short segment (copied once, read by row 10 only)
    assert plan.folded == [short]
    assert plan.private_mask.shape == (13, 5 + 13)
    assert plan.private_mask[:, :5].any(dim=1).tolist() == [False] * 10 + [True, True, False]
    assert seg.crop(20).keys[0].data_ptr() == seg.keys[0].data_ptr()  # a crop is a view


def test_judge_prefix_is_prefilled_once_per_process(tiny_model):
    model, tok = tiny_model
    search = Searcher(model, tok, config("max_new_tokens=4"), embedder=HashEmbedder())
    heads = list(search.engine.heads)
    first = search.generate(QUESTION, seed=0)
    second = search.generate("What is the capital of France?", seed=0)
    assert search.engine.heads == heads  # computed at construction, never again
    prefix_len = len(search.judge.prefix_ids)
    assert first.stats.judge_calls > 0 and second.stats.judge_calls > 0
    assert first.stats.judge_tokens_fed < prefix_len  # only the judged texts, never the fixed part
    assert second.stats.judge_tokens_fed < prefix_len


def test_draws_answered_together_equal_each_alone():
    """The engine answers every job's Draws of a step in one batch per kind: each row's token and probability are
    exactly those the reference engine's one-row-at-a-time calls give, whatever shares the batch."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 50, generator=gen) * 3
    u = torch.rand(12, generator=gen)
    u[4] = float("nan")  # a greedy row

    def draws():
        return [Draw(logits[0:5], u[0:5], topk=7, temperature=0.7), Draw(logits[5:6], u[5:6]),
                Draw(logits[6:9], u[6:9], topk=7, temperature=0.7), Draw(logits[9:12], u[9:12], topk=3),
                Draw(logits[1:2], u[1:2])]

    together = draws()
    draw_all(together)
    for draw in draws():
        draw_all([draw])
        alone = together.pop(0)
        assert (alone.tokens, alone.probs) == (draw.tokens, draw.probs)
        for row in range(draw.logits.shape[0]):
            one, v = draw.logits[row:row + 1], draw.u[row:row + 1]
            if draw.topk is None:
                assert draw.tokens[row] == int(sample_full(one, v)[0])
            else:
                probs, ids = topk_distribution(one, draw.topk, draw.temperature)
                tok, prob = pick_tokens(probs, ids, None if torch.isnan(v).item() else v)
                assert (draw.tokens[row], draw.probs[row]) == (int(tok[0]), float(prob[0]))
    assert not together


def test_common_prefix_length():
    assert common_prefix((1, 2, 3), (1, 2, 4, 5)) == 2
    assert common_prefix((1, 2), (1, 2, 3)) == 2
    assert common_prefix((), (1,)) == 0
    assert common_prefix((9, 2), (1, 2)) == 0
