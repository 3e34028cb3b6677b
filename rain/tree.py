"""The search tree: nodes and pure tree operations (PUCT selection, backup, widening test, priors).

Knows: visit counts, values, priors and embeddings of segments, and the official rules that
update them (RAIN_ALGORITHM.md §1.4, §1.6, §1.7). Does not know: tokens' meaning, the LM or the
judge. Every function here is deterministic and is tested against hand-computed numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass(eq=False)
class Node:
    """One segment of the answer. Paper symbols: N = visits, Q = value, p = prior."""

    tokens: tuple = ()
    """The segment's token ids (empty for the question's root)."""
    prior: float = 1.0
    depth: int = 0
    """Absolute depth from the question's root; not reset when re-rooting (segment lengths grow with it)."""
    parent: Optional["Node"] = None
    children: dict = field(default_factory=dict)
    """segment tuple -> Node, in proposal order."""
    visits: float = 0.0
    """N: real backups plus fractional similarity updates."""
    real_visits: int = 0
    """Backups that went through this node."""
    value: float = 0.0
    """Q: weighted mean of backed-up values, in [-1, 1]."""
    embedding: Optional[torch.Tensor] = None
    """Running mean over real visits of the embeddings of texts through this node."""
    candidates: list = field(default_factory=list)
    """Ranked (segment, probability) proposals kept for dynamic widening."""
    terminal: Optional[bool] = None
    """Set when first reached as a leaf: the answer ends inside this node."""
    verdict: Optional[float] = None
    """With search.trace: the evaluator's value the last time this node was the evaluated leaf."""
    judged: Optional[str] = None
    """With search.trace: the answer text the evaluator saw then."""
    pending: int = 0
    """Virtual losses: leaves in flight below (or at) this node in a step of several leaves (search.leaves_per_step).
    Read by selection only; never stored in visits or value, so removing them leaves no residue."""

    def path_from(self, top: "Node") -> list:
        """Nodes from just below `top` down to self."""
        path, node = [], self
        while node is not top:
            path.append(node)
            node = node.parent
        return path[::-1]


@dataclass
class ValueBounds:
    """Running min / max of the values seen (normalises Q in selection; starts at [-1, 1] as the official code)."""

    low: float = -1.0
    high: float = 1.0

    def update(self, q: float) -> None:
        self.low, self.high = min(self.low, q), max(self.high, q)

    def normalise(self, q: float) -> float:
        return (q - self.low) / (self.high - self.low + 1e-5)


WORST = -1.0
"""The lowest value an evaluator may return: what a virtual loss counts as."""


def puct_score(child: Node, parent_visits: float, *, c: float, bounds: ValueBounds, unvisited: float) -> float:
    """qh + c * p * sqrt(N_parent) / (1 + N_child), with qh = `unvisited` for a child never backed up.

    With n = child.pending virtual losses (leaves in flight through it), the child counts as having n more
    visits that each returned WORST: qh -> (qh N + normalise(WORST) n) / (N + n), N -> N + n. The parent's own
    pending losses are in `parent_visits` (select_child adds them)."""
    qh = unvisited if child.real_visits == 0 else bounds.normalise(child.value)
    visits = child.visits
    if child.pending:
        qh = (qh * visits + bounds.normalise(WORST) * child.pending) / (visits + child.pending)
        visits += child.pending
    return qh + c * child.prior * math.sqrt(parent_visits) / (1.0 + visits)


def select_child(node: Node, *, c: float, bounds: ValueBounds, unvisited: float = 0.0) -> Node:
    """The child maximising the PUCT score (first in proposal order on ties); virtual losses included."""
    return max(node.children.values(),
               key=lambda ch: puct_score(ch, node.visits + node.pending, c=c, bounds=bounds, unvisited=unvisited))


def add_virtual_loss(leaf: Node, root: Node, n: int = 1) -> None:
    """A leaf in flight: `n` virtual losses on `root` and on every node of the path down to `leaf`
    (n = -1 removes one; removal is exact, pending being a count apart from visits and value)."""
    for node in [root] + leaf.path_from(root):
        node.pending += n
        if node.pending < 0:
            raise ValueError("virtual loss removed more often than added")


def most_visited(node: Node) -> Optional[Node]:
    """The child with the most visits, ties broken by higher value; None for a leaf."""
    if not node.children:
        return None
    return max(node.children.values(), key=lambda ch: (ch.visits, ch.value))


def normalised_priors(probs: list, *, uniform_mix: float = 0.0) -> list:
    """Renormalise to sum 1, then mix: (1 - w) p + w / n (w > 0 only at the root)."""
    total = sum(probs)
    n = len(probs)
    base = [p / total for p in probs] if total > 0 else [1.0 / n] * n
    return [(1.0 - uniform_mix) * p + uniform_mix / n for p in base]


def clamp_greedy(greedy: float, sampled: list) -> float:
    """The official greedy-probability clamp: at most sum(sampled), at least max + min of sampled."""
    if not sampled:
        return greedy
    return max(min(greedy, sum(sampled)), max(sampled) + min(sampled))


def add_children(node: Node, candidates: list, *, uniform_mix: float = 0.0) -> None:
    """Expand `node` with (segment, probability) candidates; priors renormalised (and mixed at the root)."""
    priors = normalised_priors([p for _, p in candidates], uniform_mix=uniform_mix)
    for (segment, _), prior in zip(candidates, priors):
        node.children[segment] = Node(tokens=segment, prior=prior, depth=node.depth + 1, parent=node)


def mix_priors(node: Node, weight: float) -> None:
    """After a commit: the new root's children get (1 - w) p + w / n, renormalised to sum 1."""
    n = len(node.children)
    mixed = [(1.0 - weight) * child.prior + weight / n for child in node.children.values()]
    total = sum(mixed)
    for child, prior in zip(node.children.values(), mixed):
        child.prior = prior / total


def widen_with(node: Node, ranked: list, *, uniform_mix: float = 0.0) -> list:
    """Dynamic widening, as the official `add`: the first k+1 entries of `ranked` (k = current children,
    duplicates included) get priors renormalised over that window; those not yet children are added
    (existing children keep their priors). `ranked` becomes the node's stored candidate list. -> added nodes."""
    window = ranked[:len(node.children) + 1]
    priors = normalised_priors([p for _, p in window], uniform_mix=uniform_mix)
    added = []
    for (segment, _), prior in zip(window, priors):
        if segment not in node.children:
            child = Node(tokens=segment, prior=prior, depth=node.depth + 1, parent=node)
            node.children[segment] = child
            added.append(child)
    node.candidates = list(ranked)
    return added


def needs_widening(node: Node, *, segment_length: int, max_children: int, variance_scale: float) -> bool:
    """Fewer than max_children, every child embedded, children too similar (the norm of their embeddings'
    unbiased variance < variance_scale * segment_length), and all of them look bad (max value < 0).
    A single child has no variance: never widened (the official torch.var gives NaN)."""
    children = list(node.children.values())
    if len(children) < 2 or len(children) >= max_children or any(ch.embedding is None for ch in children):
        return False
    spread = torch.stack([ch.embedding for ch in children]).var(dim=0, unbiased=True).norm().item()
    return spread < variance_scale * segment_length and max(ch.value for ch in children) < 0


def backup(leaf: Node, root: Node, value: float, embeddings: list, *, bounds: ValueBounds,
           sim_threshold: float, sim_weight: float) -> None:
    """Back `value` up from `leaf` to `root` (RAIN_ALGORITHM.md §1.6).

    `embeddings[i]` embeds the text from the start of path node i's segment to the end of the
    rollout, for the path below the root (leaf.path_from(root)). Each path node: N += 1, real
    visits += 1, running-mean embedding, then every embedded sibling with cosine >= threshold
    gets a fractional visit w = sim_weight * cos and its Q moves toward `value` with weight w.
    Finally every path node's Q += (value - Q) / N.
    """
    path = leaf.path_from(root)
    root.visits += 1
    root.real_visits += 1
    for node, x in zip(path, embeddings):
        node.visits += 1
        node.real_visits += 1
        node.embedding = x.clone() if node.embedding is None else node.embedding + (x - node.embedding) / node.real_visits
        for sibling in node.parent.children.values():
            if sibling is node or sibling.embedding is None:
                continue
            cos = torch.nn.functional.cosine_similarity(node.embedding, sibling.embedding, dim=0).item()
            if cos >= sim_threshold:
                w = sim_weight * cos
                sibling.value = (sibling.value * sibling.visits + value * w) / (sibling.visits + w)
                sibling.visits += w
    root.value += (value - root.value) / root.visits
    for node in path:
        node.value += (value - node.value) / node.visits
        bounds.update(node.value)
