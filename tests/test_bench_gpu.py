"""bench/bench_gpu.py is run on a lent GPU machine by a later session, so it must keep working: a smoke run
of its whole sequence (B = 1, B = 16, the virtual-loss row, vanilla, ~2k-token contexts) at the tiny shape on CPU."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_bench_runs_end_to_end_at_the_tiny_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    assert bench.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--prompts", "3", "--cap", "2",
                       "--new-tokens", "6", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key, prompts in (("B1", 2), ("B16", 3), ("B16_leaves", 3), ("B16_2k", 3)):
        run = figures[key]
        assert run["prompts"] == prompts and 0 < run["iterations"] <= 2 * prompts, key
        assert run["forwards"] > 0 and 0 < run["lm_seconds"] < run["seconds"] and 0 <= run["non_lm_share"] < 1, key
    assert figures["B16_leaves"]["leaves_per_step"] == 4
    assert figures["vanilla"]["new_tokens"] > 0 and figures["rain_over_vanilla_time_B1"] > 0
