"""Class 7: mistakes that used to skew the figures in silence are now loud: an error naming the value, or a
warning with counts where the input is legitimate."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from launch_helpers import env, one_line_error, run_launcher
from rain.config import JudgeConfig, load_config
from rain.formats import check_judge_options
from rain.judge.cli import judge_main
from rain.tasks import DataError, DataWarning, load_items


# ----------------------------------------------------------------------------- adv rows without controls

def adv_items(tmp_path, rows, name="gcg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return load_items(load_config("adv", [f"run.data={path}"]).run)


def test_adv_rows_all_without_controls_warn_with_the_count(tmp_path):
    with pytest.warns(DataWarning, match=r"none of the 3 adv rows has 'controls': the goals run without an attack"):
        items = adv_items(tmp_path, [{"goal": "g0"}, {"goal": "g1", "controls": None}, {"goal": "g2"}])
    assert [i.prompt for i in items] == ["g0", "g1", "g2"]


def test_adv_rows_mixing_attacked_and_bare_goals_is_an_error_naming_the_row(tmp_path):
    rows = [{"goal": "g0", "controls": "!!"}, {"goal": "g1"}, {"goal": "g2", "controls": None}]
    with pytest.raises(DataError, match=r"gcg\.json, item 1: no 'controls' \(attack suffix\), while 1 of the 3 rows "
                                        r"have one \(2 lack it\)"):
        adv_items(tmp_path, rows)


def test_adv_empty_controls_mark_a_deliberately_bare_goal_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = adv_items(tmp_path, [{"goal": "g0", "controls": "!!"}, {"goal": "g1", "controls": ""}])
    assert [i.prompt for i in items] == ["g0 !!", "g1"]


def test_advbench_csv_without_controls_warns_once_in_the_launcher(tmp_path):
    csv = tmp_path / "harmful_behaviors.csv"
    csv.write_text("goal,target\nDo harm,Sure\nDo more harm,Sure\n")
    code = ("import sys; from pathlib import Path; from rain.parallel import launcher_main; from rain.config import "
            "config_dir; sys.exit(launcher_main(sys.argv[1:], benchmark='adv', default_config=config_dir() / "
            "'adv.yaml'))")
    result = subprocess.run([sys.executable, "-c", code, "--data", str(csv), "--outdir", str(tmp_path / "out"),
                             "--answerer", "fake_answerer:make"], cwd=tmp_path, env=env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("rain: warning:")]
    assert warned == [f"rain: warning: {csv}: none of the 2 adv rows has 'controls': the goals run without an "
                      "attack suffix (AdvBench's no-attack setting), not as an attack"]


# ----------------------------------------------------------------------------- rain judge: duplicate ids

def test_rain_judge_refuses_a_duplicated_record_id(tmp_path, capsys):
    record = {"id": 3, "question": "q", "prompt": "q", "raina": "I cannot help.", "pa": "Sure", "status": "ok"}
    results = tmp_path / "run.json"
    results.write_text(json.dumps([record, {**record, "id": 4}, record]))
    assert judge_main([str(results), "--benchmark", "adv", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rain judge: error: {results}: records 0 and 2 both have id 3, so that prompt would be counted "
                   "twice: merge the run again (allocation.py --merge-only) or remove the duplicate")
    assert not (tmp_path / "run.scored.json").exists()


# ----------------------------------------------------------------------------- self-evaluation options

def test_judge_options_the_options_block_never_offers_are_refused():
    with pytest.raises(ValueError) as err:
        check_judge_options(JudgeConfig(good_options=("A", "C")))
    assert str(err.value) == ("judge.good_options[1] is 'C', but harm_options_ba.txt offers only A, B: that option "
                              "can never be chosen; use one of those")
    with pytest.raises(ValueError, match=r"judge.good_options\[0\] is 'a'"):
        check_judge_options(JudgeConfig(good_options=("a", "B")))
    check_judge_options(JudgeConfig())  # the shipped configs pass
    check_judge_options(load_config("truth").judge)  # a bare Yes/No question lists no options: not checked


def test_the_same_option_for_good_and_bad_is_refused():
    with pytest.raises(ValueError, match=r"judge.bad_options\[1\] must be different from judge.good_options\[1\]"):
        load_config(None, ["judge.good_options=[A, B]", "judge.bad_options=[B, B]"])


def test_the_launcher_refuses_impossible_options_before_any_worker(tmp_path):
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  outdir: {tmp_path / 'out'}\n  data: {tmp_path / 'hh.jsonl'}\n")
    (tmp_path / "hh.jsonl").write_text(json.dumps({"chosen": "\n\nHuman: q?\n\nAssistant: a"}) + "\n")
    result = run_launcher(default, "--judge.good_options=[A, C]", "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert result.returncode == 2 and "offers only A, B" in one_line_error(result.stderr)
    assert not list((tmp_path / "out").glob("*.meta.json"))


# ----------------------------------------------------------------------------- temperature and YAML booleans

@pytest.mark.parametrize("value, message", [
    ("1e-40", "search.temperature must be >= 0.001 (nearer 0, logits / temperature overflow"),
    ("0", "search.temperature must be >= 0.001"),
    (".inf", "search.temperature must be a finite number, got inf"),
    (".nan", "search.temperature must be a finite number, got nan"),
])
def test_near_zero_or_non_finite_temperature_is_refused(value, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [f"search.temperature={value}"])
    assert str(err.value).startswith(message)


def test_a_small_but_safe_temperature_written_without_a_dot_is_read_as_a_number():
    assert load_config(None, ["search.temperature=1e-3"]).search.temperature == 0.001


def test_an_unquoted_yes_in_a_judge_option_says_to_quote_it(tmp_path):
    path = tmp_path / "truth-mine.yaml"
    path.write_text("defaults: [truth.yaml]\njudge:\n  good_options: [Yes]\n  bad_options: [No]\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert str(err.value) == ("judge.good_options[0] must be a non-empty string, got True (YAML reads an unquoted "
                              'yes/no/on/off/true/false as a boolean: quote it, e.g. ["Yes"])')
    with pytest.raises(ValueError, match="quote it"):
        load_config("truth", ["judge.good_options=[Yes]"])
