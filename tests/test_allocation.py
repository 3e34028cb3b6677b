"""End to end on the tiny model: HH/allocation.py with 1 and 2 workers, torchrun, resume, bad input.

The answers must not depend on how the prompts are sharded (per-prompt seed = search.seed + id), so
the merged files agree record for record. Only cost counters may differ: wall-clock seconds, and the
tokens fed / forward calls that depend on what the process had cached before (the judge's fixed
prefix is prefilled once per process, by its first prompt). The search trajectory counters agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAJECTORY = ("new_tokens", "inner_iterations", "commits", "non_greedy_commits", "widenings")
SMALL_BUDGET = ["search.max_new_tokens: 6", "search.max_iterations: 3", "search.min_fresh_iterations: 2"]


def env(**extra) -> dict:
    out = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(Path(__file__).parent))
    out.pop("FAKE_FAIL_IDS", None)
    return {**out, **extra}


def run(args: list, *, cwd: Path, timeout: int = 240, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=timeout)


def allocation(benchmark: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / benchmark / "allocation.py"), *map(str, args)], cwd=cwd)


def trajectory_only(records: list) -> list:
    """Records with the stats cut to the search trajectory (cost counters depend on the process's caches)."""
    for rec in records:
        rec["stats"] = {mode: stats and {k: stats[k] for k in TRAJECTORY} for mode, stats in rec["stats"].items()}
    return records


def merged(outdir: Path, name: str = "tiny") -> list:
    return trajectory_only(json.loads((outdir / f"{name}.json").read_text()))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir):
    """A folder with a tiny-model config, 3 short HH prompts and one over-long one."""
    folder = tmp_path_factory.mktemp("alloc")
    questions = ["How do I bake bread?", "Tell me a joke.", "Can you help me pick a lock?", "cat dog " * 60]
    rows = [{"chosen": f"\n\nHuman: {q}\n\nAssistant: ok"} for q in questions]
    (folder / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny.yaml").write_text("\n".join([
        "model:", f"  name: {tiny_dir}", "prompt:", "  format: chat", "search:",
        *("  " + line.split(".", 1)[1] for line in SMALL_BUDGET),
        "run:", f"  data: {folder / 'hh.jsonl'}", "  name: tiny", "  shuffle_seed: null", "  max_prompt_tokens: 60",
    ]) + "\n")
    return folder


@pytest.fixture(scope="module")
def single(tiny_run):
    """The reference: one worker."""
    result = allocation("HH", "--nump", 1, "--config", tiny_run / "tiny.yaml", "--outdir", tiny_run / "one",
                        cwd=tiny_run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"merged 4 records into {tiny_run / 'one' / 'tiny.json'}" in result.stdout
    return merged(tiny_run / "one")


def test_single_worker_answers_and_skips_the_over_long_prompt(single, tiny_run):
    assert [r["id"] for r in single] == [0, 1, 2, 3] and [r["seed"] for r in single] == [0, 1, 2, 3]
    ok, skipped = single[:3], single[3]
    assert all(r["status"] == "ok" and isinstance(r["raina"], str) and isinstance(r["pa"], str) for r in ok)
    assert all(r["stats"]["rain"]["inner_iterations"] >= 1 and r["stats"]["vanilla"] for r in ok)
    assert ok[0]["prompt"] == "How do I bake bread?" and ok[0]["prompt"] in ok[0]["question"]
    assert skipped["status"] == "skipped" and "run.max_prompt_tokens is 60" in skipped["reason"]
    meta = json.loads((tiny_run / "one" / "tiny.meta.json").read_text())
    assert meta["model"] == meta["config"]["model"]["name"] and meta["benchmark"] == "HH"
    assert meta["config"]["search"]["max_iterations"] == 3 and meta["versions"]["transformers"]


def test_two_workers_give_the_same_merged_output(single, tiny_run):
    result = allocation("HH", "--nump", 2, "--config", tiny_run / "tiny.yaml", "--outdir", tiny_run / "two",
                        cwd=tiny_run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tiny_run / "two" / "tiny.parts").glob("shard-*-of-002.jsonl"))) == 2
    assert merged(tiny_run / "two") == single


def test_resume_after_a_crash_mid_write_redoes_only_that_prompt(single, tiny_run):
    out = tiny_run / "crash"
    assert allocation("HH", "--nump", 1, "--config", tiny_run / "tiny.yaml", "--outdir", out, "--limit", 2,
                      cwd=tiny_run).returncode == 0
    shard = out / "tiny.parts" / "shard-000-of-001.jsonl"
    text = shard.read_text()
    shard.write_text(text[:-30])  # id 1 half written, as after a kill
    result = allocation("HH", "--nump", 1, "--config", tiny_run / "tiny.yaml", "--outdir", out, cwd=tiny_run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 prompts to answer" in result.stdout and "broken last line" in result.stderr
    assert [json.loads(line)["id"] for line in shard.read_text().splitlines()] == [0, 1, 2, 3]
    assert merged(out) == single


def test_torchrun_two_processes_equal_the_single_process_run(single, tiny_run):
    out = tiny_run / "torchrun"
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  "-m", "rain.worker", "--config", str(ROOT / "configs" / "hh.yaml"),
                  "--config", str(tiny_run / "tiny.yaml"), f"run.outdir={out}"], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "merged output:" in result.stdout + result.stderr
    assert len(list((out / "tiny.parts").glob("shard-*-of-002.jsonl"))) == 2
    assert merged(out) == single


def test_bad_data_line_is_one_error_naming_file_line_and_field(tiny_run):
    bad = tiny_run / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: x"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    result = allocation("HH", "--config", tiny_run / "tiny.yaml", "--data", bad, "--outdir", tiny_run / "bad",
                        cwd=tiny_run)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}, line 2: missing field 'transcript' or 'chosen' or 'rejected'" in result.stderr


def test_empty_dataset_and_nump_zero_exit_with_a_message(tiny_run):
    empty = tiny_run / "empty.jsonl"
    empty.write_text("")
    result = allocation("HH", "--config", tiny_run / "tiny.yaml", "--data", empty, cwd=tiny_run)
    assert result.returncode == 2 and "the dataset is empty" in result.stderr
    result = allocation("HH", "--nump", 0, "--config", tiny_run / "tiny.yaml", cwd=tiny_run)
    assert result.returncode == 2 and "--nump must be >= 1, got 0" in result.stderr


def test_each_launcher_loads_its_benchmark_default_config(tiny_run):
    for benchmark in ("adv", "truth"):
        result = allocation(benchmark, "--merge-only", "--data", tiny_run / "missing.csv", cwd=tiny_run)
        assert result.returncode == 2 and "data file not found" in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["vanilla", "rain"])
def test_vanilla_only_and_rain_only_modes(tiny_run, tmp_path, mode):
    from rain.config import load_config
    from rain.records import RunPaths, collect
    from rain.worker import Rank, run_shard

    cfg = load_config([ROOT / "configs" / "hh.yaml", tiny_run / "tiny.yaml"],
                      [f"run.mode={mode}", f"run.outdir={tmp_path}", "run.limit=1"])
    assert run_shard(cfg, rank=Rank()) == 1
    record = collect(RunPaths(tmp_path, "tiny"))[0]
    answered, absent = ("pa", "raina") if mode == "vanilla" else ("raina", "pa")
    assert isinstance(record[answered], str) and record[absent] is None
    assert record["stats"][mode] is not None and record["stats"]["rain" if mode == "vanilla" else "vanilla"] is None


def test_truth_and_adv_records_carry_their_benchmark_fields(tiny_dir, tmp_path):
    from rain.config import load_config
    from rain.records import RunPaths, collect
    from rain.worker import Rank, run_shard

    truth = tmp_path / "TruthfulQA.csv"
    truth.write_text("\ufeffType,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
                     "Adversarial,Law,Is the sky blue?,Yes on a clear day,Yes; Mostly,No,https://example.org\n",
                     encoding="utf-8")
    adv = tmp_path / "gcg.json"
    adv.write_text(json.dumps([{"goal": "Write a poem", "controls": "!! !!"}]))
    budget = [line.replace(": ", "=") for line in SMALL_BUDGET]
    for benchmark, data in (("truth", truth), ("adv", adv)):
        cfg = load_config([ROOT / "configs" / f"{benchmark}.yaml"],
                          [f"model.name={tiny_dir}", "prompt.format=chat", f"run.data={data}", f"run.outdir={tmp_path}",
                           f"run.name={benchmark}", *budget])
        assert run_shard(cfg, rank=Rank()) == 1
        [record] = collect(RunPaths(tmp_path, benchmark))
        assert record["status"] == "ok" and isinstance(record["raina"], str) and isinstance(record["pa"], str)
        if benchmark == "truth":
            assert record["best_answer"] == "Yes on a clear day" and record["source"] == "https://example.org"
            assert record["correct_answers"] == ["Yes", "Mostly"] and record["incorrect_answers"] == ["No"]
        else:
            assert record["prompt"] == "Write a poem !! !!" and record["controls"] == "!! !!"


def test_batched_worker_gives_the_same_merged_output(single, tiny_run):
    """run.batch_size searches several prompts at once in one worker: same records (all but seconds)."""
    result = allocation("HH", "--nump", 1, "--config", tiny_run / "tiny.yaml", "--outdir", tiny_run / "batched",
                        "--batch_size=3", cwd=tiny_run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert merged(tiny_run / "batched") == single
