"""The benchmark launcher: shards the prompts over worker processes, one GPU group each, then merges.

``python allocation.py --nump p`` (in HH/, adv/, truth/) calls `launcher_main`. It resolves the
config (the benchmark's default YAML, then ``--config`` files, then ``--key=value`` overrides and
the ``--limit/--start/--end/--outdir/...`` flags), writes or checks the run header, lists the
unfinished prompts, and starts ``p`` workers (``python -m rain.worker``), each with its own group
of the visible GPUs in ``CUDA_VISIBLE_DEVICES`` of its environment (set before torch starts in
it). With 8 GPUs and p = 4 each worker gets two; with more workers than GPUs they share GPUs
round robin; with no GPU they run on CPU and split the cores. A progress bar counts finished
prompts over all shards. Every exit code is checked: a failed worker is reported by shard, exit
code and the tail of its log, the others' results are kept, and the launcher exits non-zero;
rerunning resumes. When all succeed, the merged JSON is written and its path printed.
Faults: one launcher per run at a time (the run lock, rain/runlock.py; workers hold it with the
launcher and end when it dies); the header is checked (config, prompt fingerprint) only after the
data has loaded and the cheap model checks have passed; prompts recorded with status 'error'
are reported with their ids and retried only with --retry-errors; every bad config, data, model
or output is one line and exit status 2. Knows nothing about models or search.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from rain.config import RainConfig, load_config
from rain.fileio import atomic_write_text, check_writable_dir, plain_warnings
from rain.records import RunPaths, collect, done_ids, merge, repair_shard, run_name, write_or_check_meta
from rain.runlock import RunLock
from rain.tasks import PROJECT_ROOT, load_items, load_selection

USER_ERRORS = (ValueError, FileNotFoundError)
"""What a user's mistake or the environment raises here: DataError, ModelError, OutputError, RunBusy and config
errors are ValueErrors; every message names the file, line, field or value."""
WORKER_ERROR = "rain.worker: error: "

LOG_TAIL_LINES = 20


# ----------------------------------------------------------------------------- GPU groups

def visible_gpus(environ=os.environ) -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Placement:
    """Which GPUs each worker gets (an empty group: CPU), and a note for the user."""

    groups: tuple
    note: str


def gpu_groups(gpus: list[str], workers: int) -> Placement:
    """Split the GPUs into `workers` contiguous groups of near-equal size (the first ones get the extra)."""
    if workers < 1:
        raise ValueError(f"--nump must be >= 1, got {workers}")
    if not gpus:
        return Placement(tuple(() for _ in range(workers)), f"no GPU visible: {workers} worker(s) on CPU")
    if workers > len(gpus):
        groups = tuple((gpus[i % len(gpus)],) for i in range(workers))
        return Placement(groups, f"--nump {workers} is more than the {len(gpus)} visible GPU(s): workers share "
                                 "GPUs round robin (make sure the model fits that many times)")
    size, extra = divmod(len(gpus), workers)
    groups, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        groups.append(tuple(gpus[start:end]))
        start = end
    return Placement(tuple(groups), f"{workers} worker(s) on GPU groups " + " ".join(",".join(g) for g in groups))


def worker_env(base: dict, *, gpus: tuple, workers: int) -> dict:
    """A worker's environment: its GPUs, the project on PYTHONPATH, and (on CPU) its share of the cores."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    elif "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):  # a launcher run is not torchrun
        env.pop(name, None)
    return env


# ----------------------------------------------------------------------------- progress and logs

class ShardProgress:
    """Counts lines appended to the shard files since it was created."""

    def __init__(self, files: list[Path]):
        self.offsets = {path: path.stat().st_size if path.exists() else 0 for path in files}
        self.count = 0

    def poll(self) -> int:
        """Newly finished prompts since the last poll."""
        new = 0
        for path, offset in self.offsets.items():
            if path.exists() and path.stat().st_size > offset:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                complete = chunk.rfind(b"\n") + 1
                new += chunk[:complete].count(b"\n")
                self.offsets[path] = offset + complete
        self.count += new
        return new


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------- the launch

def preflight(cfg: RainConfig, *, answerer: Optional[str]) -> None:
    """Cheap checks before any worker starts, so that a mistake costs seconds, not a model load per worker:
    prompt files, judge options and (for the default answerer) that the model can be found and its device
    exists."""
    from rain.formats import check_judge_options, read_prompt

    if cfg.prompt.format == "fewshot":
        read_prompt(cfg.prompt.fewshot_file)
    read_prompt(cfg.judge.instruction_file)
    check_judge_options(cfg.judge)
    if answerer is None:
        from rain.loading import check_model

        check_model(cfg.model)


def _start_workers(cfg: RainConfig, paths: RunPaths, todo: list[int], *, nump: int,
                   answerer: Optional[str], lock: RunLock) -> list[subprocess.Popen]:
    workers = min(nump, len(todo))
    placement = gpu_groups(visible_gpus(), workers)
    print(f"rain: {len(todo)} prompts to answer; {placement.note}", flush=True)
    if any(len(group) > 1 for group in placement.groups) and cfg.model.device_map is None:
        print("rain: note: model.device_map is null, so each worker uses only the first GPU of its group; "
              "set model.device_map=auto to spread a large model over the group", flush=True)
    paths.parts.mkdir(parents=True, exist_ok=True)
    config_file, plan_file = paths.parts / "launch-config.json", paths.parts / "launch-plan.json"
    atomic_write_text(config_file, json.dumps(cfg.to_dict(), indent=1))
    atomic_write_text(plan_file, json.dumps({"ids": todo}))
    procs = []
    for rank, gpus in enumerate(placement.groups):
        command = [sys.executable, "-m", "rain.worker", "--config", str(config_file), "--plan", str(plan_file),
                   "--rank", str(rank), "--world", str(workers), "--launcher-pid", str(os.getpid())]
        command += ["--answerer", answerer] if answerer else []
        log = open(paths.log(rank=rank, world=workers), "a", encoding="utf-8")
        # The workers get the locked file: the run stays locked until the launcher AND its workers are gone.
        procs.append(subprocess.Popen(command, env=worker_env(dict(os.environ), gpus=gpus, workers=workers),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      pass_fds=(lock.fileno(),)))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], paths: RunPaths, *, total: int, done: int, poll_s: float) -> list[int]:
    """Wait for every worker with a progress bar; returns their exit codes."""
    progress = ShardProgress([paths.shard(rank=r, world=len(procs)) for r in range(len(procs))])
    with tqdm(total=total, initial=done, desc=paths.name, unit="prompt", dynamic_ncols=True) as bar:
        while any(p.poll() is None for p in procs):
            new = progress.poll()
            if new:
                bar.update(new)
            time.sleep(poll_s)
        bar.update(progress.poll())
    return [p.returncode for p in procs]


def _report_failures(codes: list[int], paths: RunPaths) -> int:
    """Say which workers failed; returns the launcher's exit status (0: none failed, 2: every failure was a
    bad config, data, model or output, reported as its one line; else 1)."""
    failed = [(rank, code) for rank, code in enumerate(codes) if code != 0]
    user_errors = {}
    for rank, code in failed:
        log = paths.log(rank=rank, world=len(codes))
        message = _worker_error(log) if code == 2 else None
        if message is not None:
            user_errors.setdefault(message, []).append(rank)
            continue
        print(f"rain: shard {rank} of {len(codes)} failed with exit code {code}; last lines of {log}:\n"
              f"{log_tail(log)}\n", file=sys.stderr, flush=True)
    for message, ranks in user_errors.items():
        print(f"rain: error: {message}", file=sys.stderr, flush=True)
    if failed:
        print(f"rain: {len(failed)} of {len(codes)} workers failed; the other results are kept in {paths.parts}; "
              "rerun the same command to resume", file=sys.stderr, flush=True)
    if not failed:
        return 0
    return 2 if sum(len(ranks) for ranks in user_errors.values()) == len(failed) else 1


def _worker_error(log: Path) -> Optional[str]:
    """The one-line error a worker printed before exiting with status 2, if any."""
    if not log.exists():
        return None
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.startswith(WORKER_ERROR)]
    return lines[-1][len(WORKER_ERROR):] if lines else None


def _answer_todo(cfg: RainConfig, paths: RunPaths, todo: list[int], *, total: int, nump: int,
                 answerer: Optional[str], poll_s: float, lock: RunLock) -> int:
    """Start the workers on the unfinished prompts and wait for them; returns the exit status (0: none failed)."""
    procs = _start_workers(cfg, paths, todo, nump=nump, answerer=answerer, lock=lock)
    # A launcher stopped with SIGTERM stops its workers too (no orphans writing to the shards).
    previous = signal.signal(signal.SIGTERM, lambda *_: [proc.terminate() for proc in procs])
    try:
        codes = _wait(procs, paths, total=total, done=total - len(todo), poll_s=poll_s)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
            proc.wait()
        print("rain: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return _report_failures(codes, paths)


def launch(cfg: RainConfig, *, nump: int, answerer: Optional[str] = None, poll_s: float = 1.0) -> int:
    """Run the benchmark described by `cfg` on `nump` workers; returns the exit status (0: merged, every prompt
    answered or skipped; 1: a worker failed or prompts are recorded as errors; 2: a bad config, data file,
    model or output, or another launcher on this run)."""
    paths = RunPaths(Path(cfg.run.outdir), run_name(cfg))
    try:
        if nump < 1:
            raise ValueError(f"--nump must be >= 1, got {nump}")
        check_writable_dir(paths.outdir)
        with RunLock(paths.lock) as lock:
            return _launch_locked(cfg, paths, nump=nump, answerer=answerer, poll_s=poll_s, lock=lock)
    except USER_ERRORS as err:
        print(f"rain: error: {err}", file=sys.stderr, flush=True)
        return 2


def _launch_locked(cfg: RainConfig, paths: RunPaths, *, nump: int, answerer: Optional[str], poll_s: float,
                   lock: RunLock) -> int:
    from rain.worker import hardware

    selection = load_selection(cfg.run)  # before the header: a data error leaves no trace of the run
    preflight(cfg, answerer=answerer)
    note = write_or_check_meta(paths, cfg, hardware=hardware(), selection=selection)
    if note:
        print(f"rain: note: {note}", flush=True)
    items = selection.items
    for shard in paths.shard_files():  # no worker runs yet: cut broken last lines (with a warning) once
        repair_shard(shard)
    finished = done_ids(paths, items, retry_errors=cfg.run.retry_errors)
    todo = [item.id for item in items if item.id not in finished]
    if not todo:
        print(f"rain: all {len(items)} prompts are already answered", flush=True)
    status = _answer_todo(cfg, paths, todo, total=len(items), nump=nump, answerer=answerer, poll_s=poll_s,
                          lock=lock) if todo else 0
    if status:
        return status
    records = collect(paths, items=items)  # read once: checked, merged and reported
    missing = sorted(set(todo) - {record["id"] for record in records})
    if missing:
        print(f"rain: the workers exited normally but {len(missing)} prompts have no record (first ids: "
              f"{missing[:5]}); rerun the same command to answer them", file=sys.stderr)
        return 1
    merged = merge(paths, records=records)
    print(f"rain: merged {len(items)} records into {merged}", flush=True)
    return _report_errors(records)


def _report_errors(records: list[dict]) -> int:
    """Exit status 1, with the ids and the first reasons, when prompts are recorded as errors."""
    errors = [record for record in records if record.get("status") == "error"]
    if not errors:
        return 0
    reasons = sorted({record.get("reason", "?") for record in errors})
    print(f"rain: {len(errors)} of {len(records)} prompts failed and are recorded with status 'error' (ids "
          f"{', '.join(str(r['id']) for r in errors[:10])}{', ...' if len(errors) > 10 else ''}; "
          f"{'reason' if len(reasons) == 1 else 'reasons'}: {'; '.join(reasons[:3])}); they are left out of the "
          "scores; rerun with --retry-errors to try them again", file=sys.stderr, flush=True)
    return 1


# ----------------------------------------------------------------------------- command line

def launcher_parser(benchmark: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python allocation.py", allow_abbrev=False,
        description=f"Run the {benchmark} benchmark with RAIN on p workers, resume, and merge the results. "
                    "Further arguments --section.field=value (or --field=value) override the config.")
    parser.add_argument("--nump", type=int, default=1, help="number of worker processes (default 1)")
    parser.add_argument("--config", action="append", default=[],
                        help="YAML applied after the benchmark's default config (repeatable), e.g. a model file")
    parser.add_argument("--data", help="local data file (run.data)")
    parser.add_argument("--outdir", help="output folder (run.outdir, default outputs/)")
    parser.add_argument("--name", help="run name used in output file names (run.name)")
    parser.add_argument("--mode", choices=("both", "rain", "vanilla"), help="which answers to produce (run.mode)")
    parser.add_argument("--model", "--modelname", dest="model", help="model.name: hub id, local folder or .gguf")
    parser.add_argument("--start", "--s", type=int, help="first prompt id (run.start)")
    parser.add_argument("--end", "--e", type=int, help="one past the last prompt id (run.end)")
    parser.add_argument("--limit", type=int, help="at most this many prompts (run.limit)")
    parser.add_argument("--merge-only", action="store_true", help="only merge the finished shards")
    parser.add_argument("--retry-errors", action="store_true", default=None,
                        help="answer again the prompts recorded with status 'error' (run.retry_errors)")
    parser.add_argument("--answerer", help="module:function making the per-prompt answer function "
                                           "(default: rain.worker.default_answerer)")
    return parser


_FLAG_KEYS = {"data": "run.data", "outdir": "run.outdir", "name": "run.name", "mode": "run.mode",
              "model": "model.name", "start": "run.start", "end": "run.end", "limit": "run.limit",
              "retry_errors": "run.retry_errors"}


def resolve_config(args: argparse.Namespace, overrides: list[str], *, benchmark: str,
                   default_config: Path) -> RainConfig:
    """Default config, then --config files, then key=value overrides, then the named flags."""
    flags = [f"{key}={json.dumps(getattr(args, name))}" for name, key in _FLAG_KEYS.items()
             if getattr(args, name) is not None]
    cfg = load_config([default_config] + args.config, overrides + flags)
    if cfg.run.benchmark != benchmark:
        raise ValueError(f"this launcher runs run.benchmark={benchmark}, but the config sets "
                         f"run.benchmark={cfg.run.benchmark}; use ../{cfg.run.benchmark}/allocation.py")
    return cfg


def launcher_main(argv: Optional[list[str]] = None, *, benchmark: str, default_config: Path) -> int:
    """Entry point of HH/, adv/ and truth/allocation.py; returns the exit status."""
    parser = launcher_parser(benchmark)
    args, rest = parser.parse_known_args(argv)
    bad = [text for text in rest if "=" not in text]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (config overrides look like --section.field=value)")
    plain_warnings("rain")
    try:
        cfg = resolve_config(args, rest, benchmark=benchmark, default_config=default_config)
        if args.merge_only:
            paths = RunPaths(Path(cfg.run.outdir), run_name(cfg))
            print(f"rain: merged into {merge(paths, items=load_items(cfg.run))}")
            return 0
        return launch(cfg, nump=args.nump, answerer=args.answerer)
    except USER_ERRORS as err:  # DataError is a ValueError; config errors name the value
        print(f"rain: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the workers start (while loading data, say)
        print("rain: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


