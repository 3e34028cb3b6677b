"""search.leaves_per_step > 1: several leaves per search step, steered apart by virtual loss (an opt-in beyond
the paper). The default (1) is pinned by tests/test_golden.py; here: the tree rule with hand-computed numbers,
that a step's leaves are distinct and their iterations all counted and backed up once with no virtual loss left,
that they share forward passes, that answers do not depend on the drive batch size or on the engine, and the
config error."""

from __future__ import annotations

import math
import zlib

import pytest

import rain
from rain.decoding import generate_many
from rain.search import Searcher, drive
from rain.tree import Node, ValueBounds, add_virtual_loss, puct_score, select_child
from tiny import HashEmbedder

QUESTIONS = ["How do I bake bread?", "Tell me a joke.", "Can you help me pick a lock?", "Is the sky blue?"]
SMALL = ["max_new_tokens=10", "max_iterations=12", "min_fresh_iterations=4", "trace=true"]


def scripted(question: str, answer: str) -> float:
    """Deterministic, varied verdicts (as in test_golden), so the search rewinds and branches."""
    return float(zlib.crc32(answer.encode()) % 3) - 1.0


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def config(k: int, *overrides):
    return rain.load_config(None, SMALL + [f"leaves_per_step={k}", *overrides])


def nodes(root: Node):
    yield root
    for child in root.children.values():
        yield from nodes(child)


# ------------------------------------------------------------------------------------------ the tree rule

def test_a_virtual_loss_is_a_worst_value_visit_and_is_removed_without_residue():
    root = Node(visits=4.0, real_visits=4)
    a = Node(tokens=(1,), prior=0.6, parent=root, visits=2.0, real_visits=2, value=0.5, depth=1)
    b = Node(tokens=(2,), prior=0.4, parent=root, visits=1.2, real_visits=1, value=0.0, depth=1)
    leaf = Node(tokens=(3,), prior=1.0, parent=a, depth=2)
    root.children, a.children = {a.tokens: a, b.tokens: b}, {leaf.tokens: leaf}
    bounds, c = ValueBounds(), 2.0
    before = [(n.visits, n.real_visits, n.value) for n in nodes(root)]
    assert select_child(root, c=c, bounds=bounds) is a

    add_virtual_loss(leaf, root)
    assert [n.pending for n in (root, a, b, leaf)] == [1, 1, 0, 1]
    # a: qh = (0.75 * 2 + 0 * 1) / 3, N = 3; the parent counts 4 + 1 visits
    q = bounds.normalise(0.5)
    assert puct_score(a, 5.0, c=c, bounds=bounds, unvisited=0.0) == pytest.approx(
        (q * 2 + bounds.normalise(-1.0)) / 3 + c * 0.6 * math.sqrt(5.0) / 4.0)
    assert select_child(root, c=c, bounds=bounds) is b  # steered to the other branch
    assert [(n.visits, n.real_visits, n.value) for n in nodes(root)] == before  # visits and values untouched

    add_virtual_loss(leaf, root, -1)
    assert all(n.pending == 0 for n in nodes(root))
    assert select_child(root, c=c, bounds=bounds) is a
    with pytest.raises(ValueError, match="removed more often"):
        add_virtual_loss(leaf, root, -1)


def test_leaves_per_step_zero_is_a_one_line_error_naming_the_field():
    with pytest.raises(ValueError) as err:
        rain.load_config(None, ["leaves_per_step=0"])
    assert str(err.value) == "search.leaves_per_step must be >= 1, got 0"
    assert rain.load_config(None, ["search.leaves_per_step=4"]).search.leaves_per_step == 4


# ------------------------------------------------------------------------------------------ the search

def observed(model, tok, k: int, evaluator=scripted):
    """Answer QUESTIONS one search at a time; -> (results, states, steps: [(max asked, leaves)], forwards)."""
    searcher = Searcher(model, tok, config(k), evaluator=evaluator, embedder=HashEmbedder())
    steps = []
    plain_step, plain_simulate = searcher._step, searcher._simulate

    def step(st, root, n, counted):
        steps.append((n, []))
        return (yield from plain_step(st, root, n, counted))

    def simulate(st, root, node, gen):
        if steps and k > 1:
            steps[-1][1].append(node)
            assert node.pending >= 1  # in flight: its virtual loss is on
        return plain_simulate(st, root, node, gen)

    searcher._step, searcher._simulate = step, simulate
    states = [searcher.start(q, seed=100 + i) for i, q in enumerate(QUESTIONS)]
    results = [result for _, result in drive(searcher, [(i, searcher.search(st)) for i, st in enumerate(states)])]
    return results, states, steps, searcher.engine.batches.forwards


def test_several_leaves_per_step(tiny_model):
    model, tok = tiny_model
    results, states, steps, forwards = observed(model, tok, 4)
    one, _, _, forwards_one = observed(model, tok, 1)
    for result in results:
        assert not isinstance(result, BaseException), result
        assert result.token_ids and result.stats.commits > 0 and isinstance(result.text, str)
    # every step selects 1..k distinct leaves, never more than asked; together they are the inner iterations
    assert all(1 <= len(leaves) <= n <= 4 for n, leaves in steps)
    assert all(len({id(node) for node in leaves}) == len(leaves) for _, leaves in steps)
    assert max(len(leaves) for _, leaves in steps) == 4
    assert sum(len(leaves) for _, leaves in steps) == sum(r.stats.inner_iterations for r in results)
    # the leaves of a step share forward passes: fewer sequential forwards per inner iteration
    iterations = sum(r.stats.inner_iterations for r in results)
    iterations_one = sum(r.stats.inner_iterations for r in one)
    assert forwards / iterations < 0.85 * forwards_one / iterations_one
    # no virtual loss is left, and every iteration was backed up exactly once: a node's real visits are its
    # children's plus the one evaluation that expanded it (a terminal leaf: one per evaluation, no children).
    # A root that committed a child (the child's parent is then None) saw none of that child's later backups.
    checked = 0
    for st in states:
        for node in nodes(st.root):
            assert node.pending == 0
            assert node.visits >= node.real_visits - 1e-9
            below = 1 + sum(ch.real_visits for ch in node.children.values())
            if any(ch.parent is None for ch in node.children.values()):
                assert node.real_visits <= below
            elif node.children:
                assert node.real_visits == below
                checked += 1
            elif node.real_visits:
                assert node.terminal
    assert checked > 10


def comparable(result):
    stats = result.stats.to_dict()
    stats.pop("seconds")
    trace = [[(c["segment"], c["real_visits"], pytest.approx(c["visits"], abs=1e-6),
               pytest.approx(c["value"], abs=1e-6)) for c in step["children"]] for step in result.trace]
    return result.token_ids, result.text, stats, trace


@pytest.mark.parametrize("evaluator", [scripted, None], ids=["scripted", "self-evaluation"])
def test_answers_do_not_depend_on_the_batch_size(tiny_model, evaluator):
    model, tok = tiny_model
    out = {}
    for batch_size in (1, 3):
        searcher = Searcher(model, tok, config(4), evaluator=evaluator, embedder=HashEmbedder())
        jobs = [(i, q, 100 + i, "rain") for i, q in enumerate(QUESTIONS)]
        out[batch_size] = dict(generate_many(searcher, jobs, batch_size=batch_size))
    for i in range(len(QUESTIONS)):
        assert comparable(out[3][i]["rain"]) == comparable(out[1][i]["rain"]), i


def test_cached_engine_equals_reference_engine_with_widening(tiny_model):
    """Each leaf of a step draws from its own generator: how the engine interleaves their rows does not matter.
    Widening (which happens during selection, between the leaves of a step) included."""
    model, tok = tiny_model
    widening = ["widen_variance=10.0", "segment_lengths=[1,2]", "num_candidates=3", "max_iterations=12"]
    results = {engine: rain.rain_generate(model, tok, QUESTIONS[0], config(4, f"engine={engine}", *widening), seed=3,
                                          evaluator=lambda q, a: -0.5, embedder=HashEmbedder())
               for engine in ("cached", "reference")}
    fast, ref = results["cached"], results["reference"]
    assert fast.stats.widenings > 0
    behaviour = ("new_tokens", "sampled_tokens", "judge_calls", "judge_cache_hits", "inner_iterations", "commits",
                 "non_greedy_commits", "leader_changes", "backtracks", "widenings")
    (ids, text, stats, trace), (ref_ids, ref_text, ref_stats, ref_trace) = comparable(fast), comparable(ref)
    assert (ids, text, trace) == (ref_ids, ref_text, ref_trace)
    assert {k: stats[k] for k in behaviour} == {k: ref_stats[k] for k in behaviour}
