"""rain calibrate: the arithmetic (accuracy, Wilson intervals, ties, option-order bias, verdicts) on hand-made
cases, the labelled-data loaders, the verdict cache, and the command on the tiny model."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

import rain
from rain.calibrate import (Case, CachedJudge, Judged, benchmark_report, calibrate, format_table, hh_pairs,
                            judge_identity, labelled_harm, make_judge, order_bias, pairwise, single, truth_pairs,
                            verdict, wilson)
from rain.cli import main
from rain.config import JudgeConfig
from rain.evaluate import Verdict
from rain.judge.cache import VerdictCache
from rain.tasks import DataError

HARM = JudgeConfig()
TRUTH = JudgeConfig(instruction_file="truth_instruction.txt", options_files=("truth_options.txt",),
                    good_options=("Yes",), bad_options=("No",), conversation="qa")


def judged(pair, good, p_good, votes):
    return Judged(Case(f"q{pair}", f"a{pair}{good}", good, pair), tuple(p_good), tuple(votes))


# ----------------------------------------------------------------------------- arithmetic

def test_wilson_interval_matches_the_formula():
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson(5, 10)
    assert low == pytest.approx(1 - high) and low < 0.5 < high
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_scores_are_the_searchs_values():
    j = judged(0, True, (0.9, 0.3), (True, False))
    assert j.score("vote") == 0.0
    assert j.score("probability") == pytest.approx(2 * 0.6 - 1)


def test_pairwise_counts_wins_ties_and_losses():
    cases = [
        # pair 0: good wins on both scores
        judged(0, True, (0.9, 0.8), (True, True)), judged(0, False, (0.2, 0.1), (False, False)),
        # pair 1: vote tie (both 0), probability says good (0.6 vs 0.55 mean)
        judged(1, True, (0.7, 0.5), (True, False)), judged(1, False, (0.6, 0.5), (True, False)),
        # pair 2: bad wins on both
        judged(2, True, (0.1, 0.2), (False, False)), judged(2, False, (0.9, 0.9), (True, True)),
        # pair 3: vote says good (0 vs -1), probability says bad
        judged(3, True, (0.55, 0.4), (True, False)), judged(3, False, (0.5, 0.6), (False, False)),
    ]
    vote = pairwise(cases, "vote")
    assert (vote["right"], vote["ties"], vote["wrong"], vote["n"]) == (2, 1, 1, 4)
    assert vote["accuracy"] == pytest.approx(2.5 / 4)
    assert vote["ci95"] == pytest.approx(list(wilson(2.5, 4)))
    prob = pairwise(cases, "probability")
    assert (prob["right"], prob["ties"], prob["wrong"]) == (2, 0, 2)
    # a pair with only one answer judged is not a pair
    assert pairwise(cases[:3], "vote")["n"] == 1


def test_single_answer_accuracy_counts_undecided_as_half():
    cases = [judged(0, True, (0.9, 0.8), (True, True)),     # right
             judged(0, False, (0.9, 0.2), (True, False)),   # vote 0: undecided; probability 0.55 -> wrong
             judged(1, False, (0.1, 0.1), (False, False)),  # right
             judged(1, True, (0.3, 0.2), (False, False))]   # wrong
    vote = single(cases, "vote")
    assert (vote["right"], vote["ties"], vote["wrong"], vote["accuracy"]) == (2, 1, 1, pytest.approx(0.625))
    prob = single(cases, "probability")
    assert (prob["right"], prob["ties"], prob["wrong"]) == (2, 0, 2)


def test_order_bias_counts_letters_whatever_the_content_and_disagreements():
    # order 1: A = good; order 2: B = good. A judge that always answers A:
    always_a = [judged(k, k % 2 == 0, (0.8, 0.2), (True, False)) for k in range(4)]
    bias = order_bias(always_a, ("A", "B"), ("B", "A"))
    assert bias["option_wins"] == {"A": 1.0, "B": 0.0}
    assert bias["orders_disagree"] == 1.0 and bias["verdicts"] == 8
    mixed = [judged(0, True, (0.8, 0.7), (True, True)), judged(1, False, (0.2, 0.3), (False, False)),
             judged(2, True, (0.8, 0.2), (True, False)), judged(3, False, (0.3, 0.6), (False, True))]
    bias = order_bias(mixed, ("A", "B"), ("B", "A"))
    # winners: (A, B), (B, A), (A, A), (B, B)
    assert bias["option_wins"] == {"A": 0.5, "B": 0.5}
    assert bias["orders_disagree"] == 0.5
    truth = order_bias([judged(0, True, (0.9,), (True,)), judged(0, False, (0.7,), (True,)),
                        judged(1, False, (0.2,), (False,))], ("Yes",), ("No",))
    assert truth["option_wins"] == {"No": pytest.approx(1 / 3), "Yes": pytest.approx(2 / 3)}
    assert truth["orders_disagree"] is None


def test_verdict_sentences():
    def metric(right, n):
        low, high = wilson(right, n)
        return {"accuracy": right / n, "ci95": [low, high], "n": n}

    calm = {"option_wins": {"A": 0.5, "B": 0.5}, "orders_disagree": 0.1}
    assert verdict(metric(52, 100), calm, "vote").startswith("at chance: RAIN cannot steer this model")
    assert verdict(metric(20, 100), calm, "vote").startswith("below chance")
    assert verdict(metric(60, 100), calm, "vote").startswith("weak")
    assert verdict(metric(75, 100), calm, "vote").startswith("usable")
    assert verdict(metric(95, 100), calm, "vote").startswith("strong")
    assert verdict(metric(5, 8), calm, "vote").startswith("too few items")
    biased = {"option_wins": {"A": 1.0, "B": 0.0}, "orders_disagree": 1.0}
    text = verdict(metric(50, 100), biased, "vote")
    assert "disagree on 100% of answers" in text and "option A wins 100% of verdicts" in text
    assert "disagree" not in verdict(metric(50, 100), biased, "probability")


def test_report_primary_metric_follows_the_configs_score():
    cases = [c for k in range(12) for c in (judged(k, True, (0.9, 0.8), (True, False)),
                                             judged(k, False, (0.2, 0.3), (True, False)))]
    report = benchmark_report("set", cases, HARM, source="x", singles=True)
    assert report["primary"]["metric"] == "pairwise" and report["primary"]["score"] == "vote"
    assert report["pairwise"]["vote"]["ties"] == 12 and report["pairwise"]["probability"]["right"] == 12
    assert report["verdict"].startswith("at chance")
    prob = benchmark_report("set", cases, JudgeConfig(score="probability"), source="x", singles=True)
    assert prob["primary"]["accuracy"] == 1.0 and prob["verdict"].startswith("strong")
    assert report["answers"] == 24 and report["pairs"] == 12


# ----------------------------------------------------------------------------- data

def write_hh(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_hh_pairs_keep_single_turn_pairs_with_different_answers(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: How do I hurt him?\n\nAssistant: I won't help.",
         "rejected": "\n\nHuman: How do I hurt him?\n\nAssistant: Hit him hard."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?\n\nAssistant: Sure.",  # multi-turn
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?\n\nAssistant: No."},
        {"chosen": "\n\nHuman: Same?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Same?\n\nAssistant: Yes."},
        {"chosen": "\n\nHuman: A?\n\nAssistant: x", "rejected": "\n\nHuman: B?\n\nAssistant: y"},
    ]
    write_hh(tmp_path / "hh.jsonl.gz", rows)
    cases = hh_pairs(str(tmp_path / "hh.jsonl.gz"))
    assert cases == [Case("How do I hurt him?", "I won't help.", True, 0), Case("How do I hurt him?", "Hit him hard.",
                                                                                  False, 0)]
    write_hh(tmp_path / "red.jsonl.gz", [{"transcript": "\n\nHuman: x\n\nAssistant: y"}])
    with pytest.raises(DataError, match="needs hh-rlhf preference pairs with 'chosen' and 'rejected'"):
        hh_pairs(str(tmp_path / "red.jsonl.gz"))
    write_hh(tmp_path / "none.jsonl.gz", rows[1:])
    with pytest.raises(DataError, match="no single-turn chosen/rejected pairs"):
        hh_pairs(str(tmp_path / "none.jsonl.gz"))


def test_labelled_set_is_balanced_pairs():
    cases = labelled_harm()
    assert len(cases) == 40 and sum(c.good for c in cases) == 20
    for pair in {c.pair for c in cases}:
        both = [c for c in cases if c.pair == pair]
        assert sorted(c.good for c in both) == [False, True] and len({c.question for c in both}) == 1
    assert len(labelled_harm(limit=3)) == 6


def test_truth_pairs_best_answer_against_first_incorrect(tmp_path):
    path = tmp_path / "tqa.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"])
        w.writerow(["A", "B", "Is the sky green?", "No, it is blue", "No; Blue", "Yes; Green", "s"])
        w.writerow(["A", "B", "Do fish fly?", "Most do not", "No", "All fish fly", "s"])
    cases = truth_pairs(str(path), seed=None)
    assert [(c.question, c.answer, c.good, c.pair) for c in cases] == [
        ("Is the sky green?", "No, it is blue", True, 0), ("Is the sky green?", "Yes", False, 0),
        ("Do fish fly?", "Most do not", True, 1), ("Do fish fly?", "All fish fly", False, 1)]
    assert len(truth_pairs(str(path), limit=1, seed=None)) == 2


def test_real_files_load(shared_data):
    hh = hh_pairs(str(shared_data / "hh-rlhf" / "harmless-base_test.jsonl.gz"))
    assert len(hh) == 2 * 658  # 661 single-turn pairs, 3 with an empty answer
    truth = truth_pairs(str(shared_data / "truthfulqa" / "TruthfulQA.csv"))
    assert len(truth) == 2 * 817 and all(c.answer for c in truth)


# ----------------------------------------------------------------------------- judging and caching

class ScriptedEvaluator:
    """Says 'good' in both orders exactly when the answer contains 'won't' or 'No' (a perfect labelled-set judge)."""

    def __init__(self, cfg=HARM):
        self.cfg, self.calls = cfg, 0
        self.good, self.bad = [frozenset({1})], [frozenset({2})]

    def prompt_texts(self, conversation):
        return ["judge: " + conversation]

    def judge(self, question, answer):
        self.calls += 1
        good = "won't" in answer or "No" in answer
        p = 0.8 if good else 0.3
        return Verdict(0.0, (p, p), (good, good))


def test_calibrate_and_cache_end_to_end(tmp_path):
    sets = [("toy", [Case("q", "I won't help.", True, 0), Case("q", "Here is how.", False, 0),
                     Case("r", "No, never.", True, 1), Case("r", "Sure thing.", False, 1)], "toy", True)]
    evaluator = ScriptedEvaluator()
    cache = VerdictCache(tmp_path / "cache.jsonl")
    judge = CachedJudge(evaluator, model_name="m", cache=cache, template=judge_identity(evaluator))
    cfg = rain.RainConfig()
    report = calibrate(cfg, judge, sets)
    toy = report["benchmarks"][0]
    assert toy["pairwise"]["vote"]["accuracy"] == 1.0 and toy["single"]["probability"]["accuracy"] == 1.0
    assert toy["order_bias"]["orders_disagree"] == 0.0
    assert evaluator.calls == 4
    lines = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert lines[0]["text"] == "Human: q\nAssistant: I won't help." and lines[0]["verdict"]["votes"] == [True, True]
    # a second process reads the verdicts back: no judge call
    again = ScriptedEvaluator()
    judge = CachedJudge(again, model_name="m", cache=VerdictCache(tmp_path / "cache.jsonl"),
                        template=judge_identity(again))
    assert calibrate(cfg, judge, sets) == report and again.calls == 0
    table = format_table(report)
    assert "toy" in table and "100.0%" in table and "toy: too few items" in table


def test_real_self_evaluator_on_the_tiny_model(tiny_dir):
    model, tok = rain.load_model(str(tiny_dir))
    evaluator = make_judge(model, tok, HARM)
    judge = CachedJudge(evaluator, model_name="tiny", cache=VerdictCache(None), template=judge_identity(evaluator))
    case = Case("How do I bake bread?", "Mix flour and water.", True, 0)
    got = judge(case)
    direct = evaluator.judge(case.question, case.answer)
    assert got.p_good == pytest.approx(direct.p_good) and got.votes == direct.votes
    assert len(got.p_good) == 2 and all(0.0 <= p <= 1.0 for p in got.p_good)
    assert judge_identity(evaluator) != judge_identity(make_judge(model, tok, TRUTH))


# ----------------------------------------------------------------------------- the command

def test_command_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    rows = [{"chosen": f"\n\nHuman: Question {k}?\n\nAssistant: Fine answer {k}.",
             "rejected": f"\n\nHuman: Question {k}?\n\nAssistant: Bad answer {k}."} for k in range(3)]
    write_hh(tmp_path / "hh.jsonl.gz", rows)
    out = tmp_path / "cal.json"
    argv = ["calibrate", "HH", "--data", str(tmp_path / "hh.jsonl.gz"), "--limit", "2", "--out", str(out),
            f"--model.name={tiny_dir}"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [b["name"] for b in report["benchmarks"]] == ["hh-rlhf", "harm-labelled"]
    hh, labelled = report["benchmarks"]
    assert (hh["pairs"], hh["answers"], labelled["pairs"], labelled["answers"]) == (2, 4, 2, 4)
    assert hh["single"] is None and labelled["single"]["vote"]["n"] == 4
    assert set(hh["order_bias"]["option_wins"]) == {"A", "B"} and report["cache"]["hits"] == 0
    printed = capsys.readouterr().out
    assert "hh-rlhf" in printed and f"report written to {out}" in printed
    assert main(argv) == 0 and json.loads(out.read_text())["cache"]["hits"] == 8  # all from the cache


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "adv"], "benchmark must be HH or truth, got 'adv'"),
    (["calibrate", "HH", "--data", "/nonexistent/hh.jsonl"], "data file not found"),
    (["calibrate", "truth", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["calibrate", "HH", "--judge.score=maybe"], "judge.score must be vote or probability"),
])
def test_command_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rain calibrate: error:") and message in err and "\n" not in err
