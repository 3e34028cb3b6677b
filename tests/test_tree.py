"""Tree operations against hand-computed numbers (RAIN_ALGORITHM.md §1.4, §1.6, §1.7)."""

import math

import pytest
import torch

from rain.tree import (Node, ValueBounds, add_children, backup, clamp_greedy, mix_priors, most_visited,
                       needs_widening, normalised_priors, puct_score, select_child, widen_with)


def tree_with(children):
    root = Node(visits=4, real_visits=4)
    for tokens, prior, visits, value in children:
        root.children[tokens] = Node(tokens=tokens, prior=prior, parent=root, depth=1, visits=visits,
                                     real_visits=int(visits), value=value)
    return root


def test_puct_score_matches_formula():
    root = tree_with([((1,), 0.5, 2, 0.5)])
    child = root.children[(1,)]
    expected = (0.5 + 1) / (2 + 1e-5) + 2 * 0.5 * math.sqrt(4) / 3
    assert puct_score(child, 4, c=2.0, bounds=ValueBounds(), unvisited=0.0) == pytest.approx(expected)


def test_select_prefers_good_visited_child_over_unvisited():
    root = tree_with([((1,), 0.5, 2, 0.5), ((2,), 0.3, 1, -1.0), ((3,), 0.2, 0, 0.0)])
    # scores: 1.4167, 0.6, 0.8
    assert select_child(root, c=2.0, bounds=ValueBounds()).tokens == (1,)


def test_select_explores_unvisited_when_visited_child_is_bad():
    root = tree_with([((1,), 0.5, 2, -1.0), ((2,), 0.3, 1, -1.0), ((3,), 0.2, 0, 0.0)])
    # scores: 0.667, 0.6, 0.8 -> the unvisited child
    assert select_child(root, c=2.0, bounds=ValueBounds()).tokens == (3,)


def test_unvisited_children_get_the_pessimistic_value():
    root = tree_with([((1,), 0.1, 0, 0.9)])
    assert puct_score(root.children[(1,)], 4, c=0.0, bounds=ValueBounds(), unvisited=0.0) == 0.0


def test_most_visited_breaks_ties_by_value():
    root = tree_with([((1,), 0.5, 3, 0.1), ((2,), 0.3, 3, 0.4), ((3,), 0.2, 1, 1.0)])
    assert most_visited(root).tokens == (2,)
    assert most_visited(Node()) is None


def test_backup_updates_path_and_similar_sibling():
    root = Node(visits=2, real_visits=2, value=0.0)
    a = Node(tokens=(1,), parent=root, depth=1, visits=1, real_visits=1, value=0.5, embedding=torch.tensor([1.0, 0.0]))
    b = Node(tokens=(2,), parent=root, depth=1, visits=1, real_visits=1, value=-0.5,
             embedding=torch.tensor([1.0, 0.0]))
    root.children = {(1,): a, (2,): b}
    leaf = Node(tokens=(3, 4), parent=a, depth=2)
    a.children = {(3, 4): leaf}
    backup(leaf, root, 1.0, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], bounds=ValueBounds(),
           sim_threshold=0.95, sim_weight=0.2)
    assert (root.visits, root.value) == (3, pytest.approx(1 / 3))
    assert (a.visits, a.real_visits, a.value) == (2, 2, pytest.approx(0.75))
    assert (leaf.visits, leaf.real_visits, leaf.value) == (1, 1, pytest.approx(1.0))
    assert torch.allclose(leaf.embedding, torch.tensor([0.0, 1.0]))
    # b is a's sibling with cosine 1: a fractional visit of 0.2 pulls its value toward +1
    assert b.visits == pytest.approx(1.2)
    assert b.real_visits == 1
    assert b.value == pytest.approx((-0.5 * 1 + 1.0 * 0.2) / 1.2)


def test_backup_leaves_dissimilar_sibling_alone_and_averages_embedding():
    root = Node(visits=1, real_visits=1)
    a = Node(tokens=(1,), parent=root, depth=1, visits=1, real_visits=1, value=0.0, embedding=torch.tensor([0.0, 1.0]))
    b = Node(tokens=(2,), parent=root, depth=1, visits=1, real_visits=1, value=-0.5,
             embedding=torch.tensor([1.0, 0.0]))
    root.children = {(1,): a, (2,): b}
    backup(a, root, -1.0, [torch.tensor([1.0, 0.0])], bounds=ValueBounds(), sim_threshold=0.95, sim_weight=0.2)
    assert torch.allclose(a.embedding, torch.tensor([0.5, 0.5]))  # running mean over 2 real visits
    assert (b.visits, b.value) == (1, -0.5)  # cosine 0.707 < 0.95
    assert a.value == pytest.approx(-0.5)


def test_priors_are_renormalised_and_mixed_at_the_root():
    assert normalised_priors([2.0, 1.0, 1.0]) == pytest.approx([0.5, 0.25, 0.25])
    assert normalised_priors([2.0, 1.0, 1.0], uniform_mix=0.25) == pytest.approx(
        [0.75 * 0.5 + 0.25 / 3, 0.75 * 0.25 + 0.25 / 3, 0.75 * 0.25 + 0.25 / 3])
    node = Node()
    add_children(node, [((1,), 0.6), ((2,), 0.2)], uniform_mix=0.25)
    assert [c.prior for c in node.children.values()] == pytest.approx([0.75 * 0.75 + 0.125, 0.75 * 0.25 + 0.125])
    assert all(c.depth == 1 and c.parent is node for c in node.children.values())
    mix_priors(node, 0.25)
    assert sum(c.prior for c in node.children.values()) == pytest.approx(1.0)


def test_greedy_probability_is_clamped_between_bounds():
    assert clamp_greedy(0.9, [0.1, 0.2]) == pytest.approx(0.3)  # capped at the samples' sum
    assert clamp_greedy(0.01, [0.1, 0.2]) == pytest.approx(0.3)  # raised to max + min
    assert clamp_greedy(0.3, [0.05, 0.1, 0.2]) == pytest.approx(0.3)  # inside [0.25, 0.35]
    assert clamp_greedy(0.5, []) == 0.5


def make_widenable(values, embeddings):
    node = Node(visits=3, real_visits=3)
    for i, (v, e) in enumerate(zip(values, embeddings)):
        node.children[(i + 5,)] = Node(tokens=(i + 5,), parent=node, depth=1, visits=1, real_visits=1, value=v,
                                       embedding=None if e is None else torch.tensor(e))
    return node


def widens(values, embeddings, *, segment_length=1, max_children=20):
    return needs_widening(make_widenable(values, embeddings), segment_length=segment_length,
                          max_children=max_children, variance_scale=0.03)


def test_widening_needs_similar_children_that_all_look_bad():
    same = [[1.0, 0.0], [1.0, 0.0]]
    assert widens([-0.5, -0.2], same)
    assert not widens([-0.5, 0.0], same)  # one child does not look bad
    assert not widens([-0.5, -0.2], [[1.0, 0.0], [0.0, 1.0]])  # unbiased variance [0.5, 0.5]: norm 0.707
    assert not widens([-0.5, -0.2], [[1.0, 0.0], None])  # a child never backed up
    assert not widens([-0.5, -0.2], same, max_children=2)
    assert not widens([-0.5], [[1.0, 0.0]])  # one child: no variance (official torch.var is NaN)


def test_widening_threshold_scales_with_segment_length():
    close = [[1.0, 0.0], [0.8, 0.6]]  # unbiased variance [0.02, 0.18]: norm 0.181
    assert not widens([-0.5, -0.2], close, segment_length=4)  # 0.181 >= 0.12
    assert widens([-0.5, -0.2], close, segment_length=10)  # 0.181 < 0.3


def test_widen_adds_the_next_ranked_candidate_with_renormalised_prior():
    node = make_widenable([-0.5, -0.2], [[1.0, 0.0], [1.0, 0.0]])
    ranked = [((5,), 0.5), ((6,), 0.3), ((7,), 0.1), ((8,), 0.1)]
    added = widen_with(node, ranked, uniform_mix=0.25)
    assert [c.tokens for c in added] == [(7,)]
    assert added[0].prior == pytest.approx(0.75 * (0.1 / 0.9) + 0.25 / 3)
    assert list(node.children) == [(5,), (6,), (7,)]
    assert widen_with(node, ranked)[0].tokens == (8,)


def test_widen_window_keeps_duplicates_as_the_official_add():
    node = make_widenable([-0.5, -0.2], [[1.0, 0.0], [1.0, 0.0]])
    stored = [((5,), 0.4), ((6,), 0.3)]
    fresh = [((5,), 0.4), ((9,), 0.2)]  # the fresh greedy repeats the stored greedy
    added = widen_with(node, fresh + stored)
    # window = first k+1 = 3 entries: (5), (9), (5); the new child's prior is 0.2 / 1.0
    assert [c.tokens for c in added] == [(9,)]
    assert added[0].prior == pytest.approx(0.2)
    assert node.candidates == fresh + stored
