"""Search traces in the `search.trace` schema built from small hand-made trees (no search needed), for the
trace page's tests and previews.

    step = {"step", "answer_before", "iterations", "committed", "children", "tree"}
    node = {"segment", "token_ids", "visits", "real_visits", "value", "prior", "verdict", "judged",
            "committed", "children"}
"""

from __future__ import annotations

import itertools

_ids = itertools.count(100)


def node(segment: str, visits: float = 0.0, real: int = 0, value: float = 0.0, prior: float = 0.1,
         verdict=None, judged=None, committed: bool = False, children=()) -> dict:
    return {"segment": segment, "token_ids": [next(_ids) for _ in segment.split()] or [next(_ids)],
            "visits": float(visits), "real_visits": int(real), "value": float(value), "prior": float(prior),
            "verdict": verdict, "judged": judged, "committed": committed, "children": list(children)}


def step(k: int, answer_before: str, iterations: int, tree: dict) -> dict:
    chosen = next(c for c in tree["children"] if c["committed"])
    return {"step": k, "answer_before": answer_before, "iterations": iterations, "committed": chosen["segment"],
            "children": [{key: c[key] for key in ("segment", "visits", "real_visits", "value", "prior")}
                         for c in tree["children"]],
            "tree": tree}


QUESTION = 'How do I pick a lock? <script>alert("x")</script> & more'


def lock_trace() -> list:
    """Three steps: a rewind away from the LM's first choice, a greedy commit, then a short one with hostile text."""
    q = "Human: How do I pick a lock?\nAssistant:"
    s0 = node("", 20.0, 20, 0.1, 0.0, committed=True, children=[
        node(" Sure", 6.4, 6, -0.667, 0.52, verdict=-1.0, judged=q + " Sure, insert a tension wrench",
             children=[node(", insert", 3.0, 3, -1.0, 0.6, verdict=-1.0, judged=q + " Sure, insert"),
                       node(" thing", 2.19, 2, -0.5, 0.3, verdict=0.0, judged=q + " Sure thing."),
                       node(" why", 0.0, 0, 0.0, 0.1)]),
        node(" I", 12.6, 12, 0.8333, 0.31, verdict=1.0, judged=q + " I can't help with that.", committed=True,
             children=[node(" can't", 8.0, 8, 0.875, 0.7, verdict=1.0, judged=q + " I can't help with that."),
                       node(" will", 3.0, 3, 0.6667, 0.2, verdict=1.0, judged=q + " I will not,")]),
        node(" Lock", 0.0, 0, 0.0, 0.17),
    ])
    s1 = node(" I", 12.6, 12, 0.8333, 0.31, committed=True, children=[
        node(" can't", 14.0, 14, 0.857, 0.7, verdict=1.0, judged=q + " I can't help with that.", committed=True),
        node(" will", 3.0, 3, 0.6667, 0.3, verdict=1.0, judged=q + " I will not,"),
    ])
    s2 = node(" can't", 14.0, 14, 0.857, 0.7, committed=True, children=[
        node(' help <b>"x"</b> & \'y\'\nok', 16.0, 16, 0.9375, 0.8, verdict=1.0,
             judged=q + " I can't help <b>", committed=True),
        node(" do", 0.0, 0, 0.0, 0.2),
    ])
    return [step(0, "", 20, s0), step(1, " I", 15, s1), step(2, " I can't", 15, s2)]


def legacy_trace() -> list:
    """Today's trace (before the full tree): `committed` is the answer before the step, children one level."""
    return [{"committed": "", "children": [
        {"segment": " Sure", "visits": 6.0, "real_visits": 6, "value": -0.5, "prior": 0.6},
        {"segment": " No", "visits": 9.0, "real_visits": 9, "value": 0.7, "prior": 0.4}]},
        {"committed": " No", "children": [
            {"segment": ".", "visits": 15.0, "real_visits": 15, "value": 0.9, "prior": 0.9}]}]


def walk(tree: dict):
    """Every node of a tree, depth first, with its depth."""
    stack = [(tree, 0)]
    while stack:
        current, depth = stack.pop()
        yield current, depth
        stack.extend((c, depth + 1) for c in reversed(current["children"]))
