"""Class 3: a run's header is written only once the run really starts.

A first launch that fails (no data, a data error, a model that is not there or does not load) leaves
no header that would later refuse the corrected command as "a different config". The header is
written after the data has loaded and the cheap model checks have passed; one written by a launch
whose workers then failed before any record is replaced by the next launch.
"""

from __future__ import annotations

import json
import shutil

from launch_helpers import hh_file, one_line_error, run_launcher


def default_yaml(tmp_path, *, data=None, model=None):
    lines = ["run:", "  benchmark: HH", f"  data: {data if data else 'null'}", f"  outdir: {tmp_path / 'out'}",
             "  name: m"]
    if model:
        lines = ["model:", f"  name: {model}", "prompt:", "  format: chat"] + lines
    path = tmp_path / "default.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_issue_example_no_data_offline_then_the_suggested_data_flag(tmp_path):
    default = default_yaml(tmp_path)
    first = run_launcher(default, "--limit", "1", "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert first.returncode == 2 and "--data FILE" in one_line_error(first.stderr)
    assert not (tmp_path / "out" / "m.meta.json").exists()
    data = hh_file(tmp_path / "hh.jsonl", ["a question?", "another one?"])
    second = run_launcher(default, "--limit", "1", "--data", str(data), "--answerer", "fake_answerer:make",
                          cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "out" / "m.json").read_text())[0]["status"] == "ok"


def test_a_bad_data_file_then_the_fixed_one(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no transcript"}\n')
    default = default_yaml(tmp_path, data=bad)
    first = run_launcher(default, "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert first.returncode == 2 and f"{bad}, line 1: missing field" in one_line_error(first.stderr)
    assert not (tmp_path / "out" / "m.meta.json").exists()
    good = hh_file(tmp_path / "good.jsonl", ["q?"])
    assert run_launcher(default, "--data", str(good), "--answerer", "fake_answerer:make",
                        cwd=tmp_path).returncode == 0


def test_a_missing_model_is_caught_before_the_header_and_the_workers(tmp_path):
    default = default_yaml(tmp_path, data=hh_file(tmp_path / "hh.jsonl", ["q?"]), model=tmp_path / "no-model")
    result = run_launcher(default, cwd=tmp_path)
    assert result.returncode == 2 and "model folder not found" in one_line_error(result.stderr)
    assert not (tmp_path / "out" / "m.meta.json").exists() and not (tmp_path / "out" / "m.parts").exists()


def test_a_model_that_fails_to_load_in_the_worker_then_the_right_model(tmp_path, tiny_dir):
    """Corrupt weights are only found by loading them (in the worker): one line, exit 2; the header that launch
    wrote never stood for a started run, so the corrected command replaces it."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    data = hh_file(tmp_path / "hh.jsonl", ["How do I bake bread?"])
    default = default_yaml(tmp_path, data=data, model=corrupt)
    budget = ["--search.max_new_tokens=2", "--search.max_iterations=1", "--search.min_fresh_iterations=1",
              "--run.mode=vanilla"]
    first = run_launcher(default, *budget, cwd=tmp_path)
    assert first.returncode == 2, first.stderr
    line = one_line_error(first.stderr)
    assert f"cannot load model '{corrupt}'" in line and "SafetensorError" in line
    second = run_launcher(default, *budget, "--model", str(tiny_dir), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "replaced the header of m, whose first launch wrote no record (model.name:" in second.stdout
    meta = json.loads((tmp_path / "out" / "m.meta.json").read_text())
    assert meta["model"] == str(tiny_dir)
