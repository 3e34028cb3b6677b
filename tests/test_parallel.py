"""Launcher: GPU groups, worker environments, progress, exit checks, resume and merge (fake answerer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rain.config import load_config
from rain.parallel import ShardProgress, gpu_groups, launch, launcher_main, visible_gpus, worker_env
from rain.records import RunPaths
from rain.worker import Rank, rank_from_env

TESTS = Path(__file__).parent


def hh_file(path: Path, n: int) -> Path:
    rows = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: ok"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path, *extra):
    return load_config(None, [f"run.data={hh_file(tmp_path / 'hh.jsonl', 7)}", f"run.outdir={tmp_path / 'out'}",
                              "run.name=t", *extra])


def lines(paths: RunPaths) -> list[dict]:
    return [json.loads(line) for f in paths.shard_files() for line in f.read_text().splitlines()]


# ----------------------------------------------------------------------------- placement

def test_eight_gpus_four_workers_get_two_each():
    placement = gpu_groups([str(i) for i in range(8)], 4)
    assert placement.groups == (("0", "1"), ("2", "3"), ("4", "5"), ("6", "7"))
    assert gpu_groups(["0", "1", "2"], 2).groups == (("0", "1"), ("2",))


def test_more_workers_than_gpus_share_them_with_a_note():
    placement = gpu_groups(["0", "1"], 3)
    assert placement.groups == (("0",), ("1",), ("0",)) and "more than the 2 visible GPU" in placement.note


def test_no_gpu_means_cpu_workers_and_zero_workers_is_an_error():
    placement = gpu_groups([], 2)
    assert placement.groups == ((), ()) and "on CPU" in placement.note
    with pytest.raises(ValueError, match="--nump must be >= 1, got 0"):
        gpu_groups(["0"], 0)


def test_visible_gpus_respect_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] and visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_worker_env_sets_gpus_before_the_child_starts_and_drops_torchrun_vars():
    env = worker_env({"PATH": "/bin", "RANK": "3", "WORLD_SIZE": "4"}, gpus=("2", "3"), workers=4)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and "RANK" not in env and "WORLD_SIZE" not in env
    cpu = worker_env({}, gpus=(), workers=2)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and int(cpu["OMP_NUM_THREADS"]) >= 1
    assert worker_env({"OMP_NUM_THREADS": "7"}, gpus=(), workers=2)["OMP_NUM_THREADS"] == "7"


def test_rank_comes_from_torchrun_environment():
    assert rank_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Rank(1, 2, 1)
    assert rank_from_env({}) is None
    with pytest.raises(ValueError, match="rank=2, world=2"):
        Rank(2, 2)


def test_progress_counts_only_complete_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 0}\n')
    progress = ShardProgress([path, tmp_path / "absent.jsonl"])
    with open(path, "a") as handle:
        handle.write('{"id": 1}\n{"id": 2')
    assert progress.poll() == 1
    with open(path, "a") as handle:
        handle.write('}\n')
    assert progress.poll() == 1 and progress.count == 2


# ----------------------------------------------------------------------------- launches

def test_two_workers_merge_every_prompt_in_id_order(tmp_path, fake_env, capsys):
    cfg = config(tmp_path)
    assert launch(cfg, nump=2, answerer="fake_answerer:make", poll_s=0.05) == 0
    paths = RunPaths(tmp_path / "out", "t")
    merged = json.loads(paths.merged.read_text())
    assert [r["id"] for r in merged] == list(range(7)) and merged[3]["seed"] == 3
    assert len(paths.shard_files()) == 2 and len(lines(paths)) == 7
    meta = json.loads(paths.meta.read_text())
    assert meta["benchmark"] == "HH" and "cpu_count" in meta["hardware"] and "torch" in meta["versions"]
    assert str(paths.merged) in capsys.readouterr().out


def test_each_worker_process_sees_only_its_gpu_group(tmp_path, fake_env, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the fake workers never start CUDA
    assert launch(config(tmp_path), nump=2, answerer="fake_answerer:make", poll_s=0.05) == 0
    merged = json.loads(RunPaths(tmp_path / "out", "t").merged.read_text())
    assert {r["id"]: r["worker_gpus"] for r in merged} == {i: "0,1" if i % 2 == 0 else "2,3" for i in range(7)}
    assert "GPU groups 0,1 2,3" in capsys.readouterr().out


def test_failed_worker_is_reported_others_kept_and_rerun_resumes(tmp_path, fake_env, monkeypatch, capsys):
    cfg = config(tmp_path)
    paths = RunPaths(tmp_path / "out", "t")
    monkeypatch.setenv("FAKE_CRASH_IDS", "3")  # worker 1 of 2 gets ids 1, 3, 5 and dies on 3
    assert launch(cfg, nump=2, answerer="fake_answerer:make", poll_s=0.05) == 1
    err = capsys.readouterr().err
    assert "shard 1 of 2 failed with exit code 1" in err and "fake crash on prompt id 3" in err
    assert not paths.merged.exists()
    assert sorted(r["id"] for r in lines(paths)) == [0, 1, 2, 4, 6]
    monkeypatch.delenv("FAKE_CRASH_IDS")
    assert launch(cfg, nump=2, answerer="fake_answerer:make", poll_s=0.05) == 0
    assert sorted(r["id"] for r in lines(paths)) == list(range(7))  # 3 and 5 redone, nothing duplicated
    assert "2 prompts to answer" in capsys.readouterr().out
    assert launch(cfg, nump=3, answerer="fake_answerer:make", poll_s=0.05) == 0
    assert "already answered" in capsys.readouterr().out and len(lines(paths)) == 7


def test_resume_redoes_a_prompt_whose_line_was_cut_by_a_crash(tmp_path, fake_env):
    cfg = config(tmp_path)
    paths = RunPaths(tmp_path / "out", "t")
    assert launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 0
    shard = paths.shard(rank=0, world=1)
    text = shard.read_text()
    shard.write_text(text[:len(text) - 40])  # the last record (id 6) half written
    with pytest.warns(UserWarning, match="line 7: broken last line"):
        assert launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 0
    assert shard.read_text().count("\n") == 7  # cut before the rerun, then id 6 appended again
    assert [r["id"] for r in lines(paths)] == list(range(7))
    assert [r["id"] for r in json.loads(paths.merged.read_text())] == list(range(7))


def test_launcher_cli_errors_are_messages_not_crashes(tmp_path, fake_env, capsys):
    default = tmp_path / "default.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', 3)}\n")
    out = tmp_path / "out"
    assert launcher_main(["--nump", "0", "--outdir", str(out)], benchmark="HH", default_config=default) == 2
    assert "--nump must be >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert launcher_main(["--outdir", str(tmp_path / "file" / "sub")], benchmark="HH", default_config=default) == 2
    assert "cannot create output folder" in capsys.readouterr().err
    assert launcher_main(["--search.max_iterations=0"], benchmark="HH", default_config=default) == 2
    assert "search.max_iterations must be >= 1, got 0" in capsys.readouterr().err
    assert launcher_main(["--run.benchmark=adv"], benchmark="HH", default_config=default) == 2
    assert "use ../adv/allocation.py" in capsys.readouterr().err



def test_worker_entry_reports_a_bad_data_file_in_one_line(tmp_path, capsys):
    from rain.worker import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: x"}\n[1, 2]\n')
    assert main([f"run.data={bad}", f"run.outdir={tmp_path}"]) == 2
    assert f"{bad}, line 2: expected a JSON object, got list" in capsys.readouterr().err


def test_sigterm_to_the_launcher_stops_its_workers_and_the_rerun_resumes(tmp_path, fake_env):
    slow = tmp_path / "slow_answerer.py"
    slow.write_text("import time\nimport fake_answerer\n\n\ndef make(cfg):\n    answer = fake_answerer.make(cfg)\n"
                    "    return lambda item: (time.sleep(0.3), answer(item))[1]\n")
    default = tmp_path / "default.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', 40)}\n  name: t\n"
                       f"  outdir: {tmp_path / 'out'}\n")
    code = ("import sys; from pathlib import Path; from rain.parallel import launcher_main; "
            f"sys.exit(launcher_main(['--nump', '2', '--answerer', 'slow_answerer:make'], benchmark='HH', "
            f"default_config=Path({str(default)!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), str(TESTS.parent)])}
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    paths = RunPaths(tmp_path / "out", "t")
    while len(lines(paths)) < 4:
        time.sleep(0.1)
    launcher.terminate()
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 1 and "failed with exit code -15" in err
    count = len(lines(paths))
    time.sleep(1.0)
    assert len(lines(paths)) == count < 40  # the workers are gone: nothing more is written
    assert launch(load_config(default), nump=2, answerer="fake_answerer:make", poll_s=0.05) == 0
    assert sorted(r["id"] for r in lines(paths)) == list(range(40))
