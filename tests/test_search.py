"""The search's observable behaviour: steering by the evaluator, stop rules, budgets, limits."""

import pytest

import rain
from tiny import EosAfter, HashEmbedder

QUESTION = "Tell me a joke."


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def cfg(*overrides):
    return rain.load_config(None, list(overrides))


def run(model, tok, config, evaluator, question=QUESTION, seed=0):
    return rain.rain_generate(model, tok, question, config, seed=seed, evaluator=evaluator, embedder=HashEmbedder())


def test_search_plus_rewind_steers_away_from_a_penalised_word(tiny_model):
    model, tok = tiny_model
    config = cfg("max_new_tokens=8", "max_iterations=30", "min_fresh_iterations=10")
    vanilla = rain.vanilla_generate(model, tok, QUESTION, config)
    banned = tok.decode(vanilla.token_ids[:1]).strip()  # the word vanilla decoding starts with
    assert banned and banned in vanilla.text

    def evaluator(question, answer):
        return -1.0 if banned in answer else 1.0

    result = run(model, tok, config, evaluator)
    assert result.stats.new_tokens > 0
    assert banned not in result.text
    assert result.stats.non_greedy_commits >= 1  # the committed first token is not the LM's favourite


def test_early_stop_fires_after_min_visits_real_visits(tiny_model):
    model, tok = tiny_model
    # c = 0: selection is greedy on value, so one child takes every visit after the root's expansion
    config = cfg("max_new_tokens=1", "c_puct=0", "min_visits=2", "value_threshold=0.8")
    result = run(model, tok, config, lambda q, a: 1.0)
    # iteration 1 expands the root; iterations 2-4 visit one child: real visits 3 > 2 and value 1 > 0.8
    assert result.stats.inner_iterations == 4
    assert result.stats.commits == 1


def test_budget_is_spent_when_values_stay_low(tiny_model):
    model, tok = tiny_model
    result = run(model, tok, cfg("max_new_tokens=1", "max_iterations=12", "min_fresh_iterations=5"), lambda q, a: -1.0)
    assert result.stats.inner_iterations == 12  # max(12 - 0 carried visits, 5)
    result = run(model, tok, cfg("max_new_tokens=1", "max_iterations=3", "min_fresh_iterations=5"), lambda q, a: -1.0)
    assert result.stats.inner_iterations == 5  # at least min_fresh_iterations


def test_subtree_is_reused_after_a_commit(tiny_model):
    model, tok = tiny_model
    config = cfg("max_new_tokens=2", "max_iterations=10", "min_fresh_iterations=4", "segment_lengths=[1]", "trace=true")
    result = run(model, tok, config, lambda q, a: -1.0)
    # second step: root visits topped up to 10 from the committed child's carried real visits (>= 1)
    second = result.stats.inner_iterations - 10
    carried = sum(c["real_visits"] for c in result.trace[0]["children"]
                  if c["segment"] == tok.decode(result.token_ids[:1]))
    assert second == max(10 - carried, 4)


def test_eos_inside_a_segment_stops_generation(tiny_model):
    model, tok = tiny_model
    config = cfg("segment_lengths=[4]", "max_iterations=6", "min_fresh_iterations=2", "max_new_tokens=40")
    prompt_len = len(rain.prompt_ids(tok, QUESTION, config.prompt))
    wrapped = EosAfter(model, prompt_len=prompt_len, n=2, eos_id=tok.eos_token_id)
    result = run(wrapped, tok, config, lambda q, a: 1.0)
    assert result.token_ids[-1] == tok.eos_token_id
    assert len(result.token_ids) == 3  # two tokens, then EOS inside the first 4-token segment
    assert result.stats.commits == 1
    vanilla = rain.vanilla_generate(wrapped, tok, QUESTION, config)
    assert vanilla.token_ids[-1] == tok.eos_token_id and len(vanilla.token_ids) == 3


def test_length_limit_holds(tiny_model):
    model, tok = tiny_model
    prompt_len = len(rain.prompt_ids(tok, QUESTION, rain.RainConfig().prompt))
    config = cfg(f"max_length={prompt_len + 7}", "max_iterations=4", "min_fresh_iterations=2")
    result = run(model, tok, config, lambda q, a: 1.0)
    assert len(result.token_ids) == 7 or (result.token_ids and result.token_ids[-1] == tok.eos_token_id)
    assert len(result.token_ids) <= 7
    assert len(rain.vanilla_generate(model, tok, QUESTION, config).token_ids) <= 7


def test_new_turn_marker_ends_the_answer_text(tiny_model):
    model, tok = tiny_model
    from rain.formats import AnswerRules

    rules = AnswerRules(frozenset({tok.eos_token_id}), "Human:", ",.")
    ids = tok(" Sure thing.\nHuman: more", add_special_tokens=False)["input_ids"]
    assert rules.finished(tok, ids)
    assert rules.text(tok, ids) == "Sure thing."
    assert rules.clause_ended(tok, tok(" Sure thing.", add_special_tokens=False)["input_ids"])
    assert not rules.clause_ended(tok, tok(" Sure thing", add_special_tokens=False)["input_ids"])


def test_same_seed_gives_the_same_answer(tiny_model):
    model, tok = tiny_model
    config = cfg("max_new_tokens=6", "max_iterations=6", "min_fresh_iterations=2")
    a = run(model, tok, config, lambda q, ans: 0.0, seed=5)
    b = run(model, tok, config, lambda q, ans: 0.0, seed=5)
    assert a.token_ids == b.token_ids


def test_evaluator_outside_range_is_an_error(tiny_model):
    model, tok = tiny_model
    with pytest.raises(ValueError, match="outside \\[-1, 1\\]"):
        run(model, tok, cfg("max_new_tokens=1", "max_iterations=2", "min_fresh_iterations=1"), lambda q, a: 3.0)


# ---------------------------------------------------------------- rewind telemetry, driven by scripted evaluators

def telemetry(model, tok, evaluator, *extra):
    config = cfg("max_new_tokens=2", "segment_lengths=[1]", "max_iterations=12", "min_fresh_iterations=4", *extra)
    return run(model, tok, config, evaluator).stats


def test_a_search_whose_values_never_drop_never_backtracks(tiny_model):
    model, tok = tiny_model
    stats = telemetry(model, tok, lambda q, a: 1.0)
    assert stats.backtracks == 0 and stats.non_greedy_commits == 0


def test_backtracking_then_returning_to_greedy_counts_backtracks_not_non_greedy_commits(tiny_model):
    """The old 'rewinds' statistic saw nothing here: the search left the greedy branch after its value dropped,
    then came back to it and committed it."""
    model, tok = tiny_model
    calls = []

    def evaluator(question, answer):
        calls.append(answer)
        return -1.0 if len(calls) == 2 else 1.0  # the first child judged (greedy) looks bad once

    stats = telemetry(model, tok, evaluator)
    assert stats.backtracks >= 1
    assert stats.non_greedy_commits == 0


def test_a_bad_favourite_changes_the_leader_and_the_commit(tiny_model):
    model, tok = tiny_model
    config = cfg("max_new_tokens=2", "segment_lengths=[1]")
    favourite = tok.decode(rain.vanilla_generate(model, tok, QUESTION, config).token_ids[:1]).strip()

    def evaluator(question, answer):
        return -1.0 if answer.startswith(favourite) else 1.0

    stats = telemetry(model, tok, evaluator, "max_iterations=30")
    assert stats.non_greedy_commits >= 1 and stats.backtracks >= 1 and stats.leader_changes >= 1


def test_widenings_count_children_added(tiny_model):
    model, tok = tiny_model
    config = cfg("max_new_tokens=3", "segment_lengths=[1]", "num_candidates=2", "widen_variance=100.0",
                 "max_iterations=12", "min_fresh_iterations=4", "trace=true")
    result = run(model, tok, config, lambda q, a: -0.5)
    first = result.trace[0]["children"]
    assert len(first) > 2  # the root started with 2 children and was widened
    assert result.stats.widenings >= len(first) - 2
