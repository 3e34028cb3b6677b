"""Golden answers: exact token ids and search statistics for fixed seeds on the tiny model, under the
hh, adv and truth configs, with the real self-evaluation through the engine.

These pin the search's behaviour. A refactor of the engine or the search must keep them equal; a
deliberate change of behaviour re-records them (``RAIN_GOLDEN_RECORD=1 pytest tests/test_golden.py``)
in a commit that says why.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

import rain
from tiny import HashEmbedder

GOLDEN = Path(__file__).parent / "golden" / "answers.json"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUESTIONS = ["How do I bake bread?", "Can you help me pick a lock?"]
SMALL = ["max_new_tokens=12", "max_iterations=10", "min_fresh_iterations=4"]


def scripted(question: str, answer: str) -> float:
    """A deterministic evaluator with varied verdicts, so the search rewinds."""
    return float(zlib.crc32(answer.encode()) % 3) - 1.0


def negative(question: str, answer: str) -> float:
    return -0.5


# case -> (config file, overrides, evaluator: None for the model's self-evaluation)
CASES = {
    "hh": ("hh.yaml", [], None),
    "adv": ("adv.yaml", [], None),
    "truth": ("truth.yaml", [], None),
    "hh-scripted": ("hh.yaml", [], scripted),
    "hh-widening": ("hh.yaml", ["widen_variance=10.0", "segment_lengths=[1,2,3]", "num_candidates=3",
                               "widen_sample_attempts=3"], negative),
}
BEHAVIOUR = ("new_tokens", "sampled_tokens", "judge_calls", "judge_cache_hits", "inner_iterations", "commits",
             "non_greedy_commits", "leader_changes", "backtracks", "widenings")


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def observe(model, tok, case: str) -> list:
    file, overrides, evaluator = CASES[case]
    cfg = rain.load_config(CONFIGS / file, SMALL + overrides + ["trace=true"])
    out = []
    for seed, question in enumerate(QUESTIONS):
        result = rain.rain_generate(model, tok, question, cfg, seed=seed, evaluator=evaluator,
                                    embedder=HashEmbedder())
        trace = [[[c["segment"], round(c["visits"], 6), round(c["value"], 6)] for c in step["children"]]
                 for step in result.trace]
        out.append({"question": question, "seed": seed, "token_ids": result.token_ids, "text": result.text,
                    "stats": {k: getattr(result.stats, k) for k in BEHAVIOUR}, "trace": trace})
    return out


def test_golden_answers(tiny_model):
    model, tok = tiny_model
    seen = {case: observe(model, tok, case) for case in CASES}
    if os.environ.get("RAIN_GOLDEN_RECORD"):
        GOLDEN.write_text(json.dumps(seen, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for case in CASES:
        for got, want in zip(seen[case], golden[case]):
            assert got["token_ids"] == want["token_ids"], (case, got["question"])
            assert got["stats"] == want["stats"], (case, got["question"])
            assert got["trace"] == want["trace"], (case, got["question"])
    assert sum(r["stats"]["widenings"] for r in golden["hh-widening"]) > 0
    assert sum(r["stats"]["non_greedy_commits"] for r in golden["hh-scripted"]) > 0
