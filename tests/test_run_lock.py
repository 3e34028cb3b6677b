"""Class 5: one launcher per run at a time, and workers that stop when their launcher dies.

Two launchers on one run (together, or 50 ms apart) never both answer: the second is refused with a line
naming the first's pid. A SIGKILLed launcher's workers stop by themselves, its lock is released by the
kernel, and an immediate rerun answers every prompt exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import TESTS, env, hh_file, launcher_command, one_line_error, shard_records
from rain.runlock import RunBusy, RunLock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and PR_SET_PDEATHSIG: Linux")


def slow_run(tmp_path, n: int = 30, delay: float = 0.2):
    (tmp_path / "slow_answerer.py").write_text(
        "import time\nimport fake_answerer\n\n\ndef make(cfg):\n    answer = fake_answerer.make(cfg)\n"
        f"    return lambda item: (time.sleep({delay}), answer(item))[1]\n")
    default = tmp_path / "default.yaml"
    data = hh_file(tmp_path / "hh.jsonl", [f"question {i}?" for i in range(n)])
    default.write_text(f"run:\n  benchmark: HH\n  data: {data}\n  name: t\n  outdir: {tmp_path / 'out'}\n")
    return default


def start(default, tmp_path, *args) -> subprocess.Popen:
    environment = env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS), str(TESTS.parent)]))
    return subprocess.Popen(launcher_command(default, "--answerer", "slow_answerer:make", *args), cwd=tmp_path,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def count(tmp_path) -> int:
    return len(shard_records(tmp_path / "out", "t")) if (tmp_path / "out" / "t.parts").exists() else 0


def test_a_second_launcher_50_ms_later_is_refused_naming_the_first(tmp_path):
    default = slow_run(tmp_path, n=12, delay=0.1)
    first = start(default, tmp_path, "--nump", "2")
    time.sleep(0.05)
    second = start(default, tmp_path, "--nump", "2")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 2
    line = one_line_error(err2)
    assert f"another launcher (pid {first.pid}) is running run {tmp_path / 'out' / 't'}" in line
    assert "--name NAME or --outdir DIR" in line
    assert sorted(r["id"] for r in shard_records(tmp_path / "out", "t")) == list(range(12))  # each once


def test_launchers_started_together_answer_each_prompt_once(tmp_path):
    default = slow_run(tmp_path, n=8, delay=0.05)
    procs = [start(default, tmp_path) for _ in range(3)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 2, 2]
    assert sorted(r["id"] for r in shard_records(tmp_path / "out", "t")) == list(range(8))


def test_a_sigkilled_launcher_takes_its_workers_with_it_and_the_rerun_answers_each_once(tmp_path):
    default = slow_run(tmp_path, n=30, delay=0.2)
    launcher = start(default, tmp_path, "--nump", "2")
    wait_for(lambda: count(tmp_path) >= 4)
    launcher.kill()  # SIGKILL: no handler runs in the launcher
    launcher.wait(timeout=30)
    time.sleep(1.5)  # the workers got SIGTERM from the kernel (PR_SET_PDEATHSIG) and are gone
    settled = count(tmp_path)
    time.sleep(1.0)
    assert count(tmp_path) == settled < 30  # nothing more is written
    rerun = start(default, tmp_path, "--nump", "2")
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    ids = [r["id"] for r in shard_records(tmp_path / "out", "t")]
    assert sorted(ids) == list(range(30))  # every prompt exactly once: no duplicated work
    assert len(json.loads((tmp_path / "out" / "t.json").read_text())) == 30


def test_the_lock_of_a_killed_holder_is_free_and_a_live_one_is_named(tmp_path):
    path = tmp_path / "r.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from rain.runlock import RunLock; lock = RunLock(sys.argv[2]).acquire(); print('held', "
                               "flush=True); time.sleep(60)", str(TESTS.parent), str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunBusy, match=rf"another launcher \(pid {holder.pid}\) is running run {tmp_path / 'r'}"):
        RunLock(path, wait_s=0).acquire()
    with pytest.raises(RunBusy):
        RunLock(path, shared=True, wait_s=0).acquire()  # a torchrun worker beside a launcher
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(path, wait_s=0):  # released by the kernel: no stale lock to clean up
        pass


def test_workers_started_without_a_launcher_share_the_lock(tmp_path):
    path = tmp_path / "r.lock"
    with RunLock(path, shared=True, wait_s=0), RunLock(path, shared=True, wait_s=0):
        with pytest.raises(RunBusy, match="workers started with torchrun"):
            RunLock(path, wait_s=0).acquire()


def test_other_runs_in_the_same_outdir_are_not_blocked(tmp_path):
    default = slow_run(tmp_path, n=6, delay=0.1)
    first = start(default, tmp_path)
    other = start(default, tmp_path, "--name", "other")
    assert other.wait(timeout=120) == 0 and first.wait(timeout=120) == 0


def test_ctrl_c_stops_the_launcher_and_its_workers_with_exit_130_and_the_rerun_resumes(tmp_path):
    default = slow_run(tmp_path, n=30, delay=0.2)
    environment = env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(TESTS), str(TESTS.parent)]))
    launcher = subprocess.Popen(launcher_command(default, "--nump", "2", "--answerer", "slow_answerer:make"),
                                cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: count(tmp_path) >= 2)
    os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130 and "Traceback" not in err
    assert "rain: interrupted; rerun the same command to resume" in err
    settled = count(tmp_path)
    time.sleep(1.0)
    assert count(tmp_path) == settled < 30
    rerun = start(default, tmp_path, "--nump", "2")
    assert rerun.wait(timeout=120) == 0
    assert sorted(r["id"] for r in shard_records(tmp_path / "out", "t")) == list(range(30))
