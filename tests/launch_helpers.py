"""Helpers for the reliability tests: data files, launcher runs with the fake answerer, shard contents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def hh_file(path: Path, questions: list[str]) -> Path:
    """An hh-rlhf style .jsonl whose first human turns are `questions`."""
    rows = [{"chosen": f"\n\nHuman: {q}\n\nAssistant: ok"} for q in questions]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shard_records(outdir: Path, name: str) -> list[dict]:
    """Every record line of every shard of a run, in file order."""
    parts = outdir / f"{name}.parts"
    return [json.loads(line) for f in sorted(parts.glob("shard-*.jsonl")) for line in f.read_text().splitlines()]


def env(**extra) -> dict:
    """A subprocess environment: the tests folder and the checkout importable, CPU only, offline."""
    out = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
    for name in ("FAKE_FAIL_IDS", "FAKE_CRASH_IDS"):
        out.pop(name, None)
    return {**out, **extra}


def launcher_command(default_config: Path, *args: str) -> list[str]:
    """A `python -c` command running the HH launcher with `default_config` and `args`."""
    code = ("import sys; from pathlib import Path; from rain.parallel import launcher_main; "
            f"sys.exit(launcher_main(sys.argv[1:], benchmark='HH', default_config=Path({str(default_config)!r})))")
    return [sys.executable, "-c", code, *args]


def run_launcher(default_config: Path, *args: str, cwd: Path, timeout: int = 120, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(launcher_command(default_config, *args), cwd=cwd, env=env(**extra), capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(stderr: str, prefix: str = "rain: error: ") -> str:
    """The single error line of a run's stderr (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, stderr
    return errors[0]
