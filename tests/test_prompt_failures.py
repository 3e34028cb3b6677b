"""Class 2: one bad prompt never blocks its worker.

A prompt whose answer fails (here: an answerer that raises, and a real model whose logits are NaN) is
recorded with status 'error' and its reason, the worker goes on with the others, the launcher says
which ids failed and why, and a rerun tries them again only with --retry-errors. Text that cannot
be tokenized or written (a lone surrogate) is caught when the data file is read, naming the line.
"""

from __future__ import annotations

import json

import pytest
import torch

from launch_helpers import hh_file, one_line_error, run_launcher, shard_records
from rain.config import load_config
from rain.parallel import launch
from rain.records import RunPaths, collect
from rain.tasks import DataError, load_items
from rain.worker import Rank, run_shard


QUESTIONS = [f"question {i}?" for i in range(6)]


def test_a_lone_surrogate_is_a_data_error_naming_file_line_and_field(tmp_path):
    path = tmp_path / "hh.jsonl"
    good = json.dumps({"chosen": "\n\nHuman: fine?\n\nAssistant: ok"})
    path.write_text(good + "\n" + '{"chosen": "\\n\\nHuman: smile \\ud83d please\\n\\nAssistant: ok"}\n')
    with pytest.raises(DataError) as err:
        load_items(load_config(None, [f"run.data={path}"]).run)
    assert str(err.value).startswith(f"{path}, line 2: field 'chosen' is not valid Unicode text (a lone surrogate")


def test_the_issue_example_surrogate_at_id_0_with_one_worker_is_one_line_exit_2(tmp_path):
    path = tmp_path / "hh.jsonl"
    lines = ['{"chosen": "\\n\\nHuman: \\ud83d\\n\\nAssistant: ok"}'] + [
        json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: ok"}) for q in QUESTIONS[:5]]
    path.write_text("\n".join(lines) + "\n")
    default = tmp_path / "default.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {path}\n  name: t\n  outdir: {tmp_path / 'out'}\n")
    result = run_launcher(default, "--nump", "1", "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert result.returncode == 2
    assert "line 1: field 'chosen' is not valid Unicode text" in one_line_error(result.stderr)
    assert not (tmp_path / "out" / "t.meta.json").exists()


def test_a_failing_prompt_is_recorded_as_an_error_and_the_worker_goes_on(tmp_path, fake_env, monkeypatch, capsys):
    cfg = load_config(None, [f"run.data={hh_file(tmp_path / 'hh.jsonl', QUESTIONS)}", f"run.outdir={tmp_path}",
                             "run.name=t", "run.shuffle_seed=null"])
    monkeypatch.setenv("FAKE_FAIL_IDS", "0")  # the first prompt of the only worker
    assert launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("rain: 1 of 6 prompts failed and are recorded with status 'error' (ids 0; reason: RuntimeError: fake "
            "failure on prompt id 0)") in err and "--retry-errors" in err
    merged = json.loads(RunPaths(tmp_path, "t").merged.read_text())
    assert [r["id"] for r in merged] == list(range(6))
    assert merged[0]["status"] == "error" and merged[0]["reason"] == "RuntimeError: fake failure on prompt id 0"
    assert merged[0]["raina"] is None and all(r["status"] == "ok" for r in merged[1:])
    log = (tmp_path / "t.parts" / "shard-000-of-001.log").read_text()
    assert "Traceback" in log  # the details stay in the worker's log

    # a plain rerun keeps the error (no work, still exit 1); --retry-errors answers it again
    assert launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 1
    assert "already answered" in capsys.readouterr().out and len(shard_records(tmp_path, "t")) == 6
    monkeypatch.setenv("FAKE_FAIL_IDS", "")
    retry = cfg.replace(run={"retry_errors": True})
    assert launch(retry, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 0
    assert "1 prompts to answer" in capsys.readouterr().out
    merged = json.loads(RunPaths(tmp_path, "t").merged.read_text())
    assert [r["status"] for r in merged] == ["ok"] * 6  # the ok record wins over the earlier error one
    assert [r["id"] for r in shard_records(tmp_path, "t")] == [0, 1, 2, 3, 4, 5, 0]


def test_retry_errors_flag_of_the_launcher(tmp_path):
    default = tmp_path / "default.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', QUESTIONS[:3])}\n"
                       f"  name: t\n  outdir: {tmp_path / 'out'}\n")
    first = run_launcher(default, "--answerer", "fake_answerer:make", cwd=tmp_path, FAKE_FAIL_IDS="1")
    assert first.returncode == 1 and "(ids 1; reason: RuntimeError" in first.stderr
    again = run_launcher(default, "--answerer", "fake_answerer:make", "--retry-errors", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in json.loads((tmp_path / "out" / "t.json").read_text())] == ["ok"] * 3


def nan_model(tiny_dir, folder, *, token_text=None):
    """The tiny model with NaN weights: all of lm_head, or only the embeddings of `token_text`'s tokens (so only
    prompts holding that text give NaN logits)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(tiny_dir, folder)
    weights = load_file(folder / "model.safetensors")
    if token_text is None:
        weights["lm_head.weight"] = torch.full_like(weights["lm_head.weight"], float("nan"))
    else:
        ids = AutoTokenizer.from_pretrained(folder)(token_text, add_special_tokens=False)["input_ids"]
        weights["model.embed_tokens.weight"][ids] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def nan_cfg(model, tmp_path, questions, *extra):
    return load_config(None, [f"model.name={model}", "prompt.format=chat", "run.mode=vanilla",
                              f"run.data={hh_file(tmp_path / 'hh.jsonl', questions)}", f"run.outdir={tmp_path}",
                              "run.name=nan", "run.shuffle_seed=null", "search.max_new_tokens=3", *extra])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_nan_logits_on_one_prompt_give_it_an_error_record_and_the_others_their_answers(tmp_path, tiny_dir,
                                                                                      batch_size):
    """Logits that are NaN (e.g. float16 overflow) for one prompt: no answer from NaN probabilities, an error
    record for it, answers for the others, also when they are searched in one batch."""
    model = nan_model(tiny_dir, tmp_path / "nan-model", token_text="\u00a7")
    cfg = nan_cfg(model, tmp_path, ["How do I bake bread?", "Tell me \u00a7 now", "Tell me a joke."],
                  f"run.batch_size={batch_size}")
    assert run_shard(cfg, rank=Rank()) == 3
    records = collect(RunPaths(tmp_path, "nan"))
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[1]["reason"].startswith("NonFiniteLogits: the model produced NaN or infinite logits")


def test_a_model_with_nan_logits_everywhere_is_a_one_line_model_error(tmp_path, tiny_dir):
    from rain.loading import ModelError

    model = nan_model(tiny_dir, tmp_path / "nan-model")
    with pytest.raises(ModelError) as err:
        run_shard(nan_cfg(model, tmp_path, QUESTIONS[:2]), rank=Rank())
    assert "\n" not in str(err.value) and "gives NaN or infinite logits on the judge's fixed prompt" in str(err.value)


def test_rain_judge_leaves_error_records_out_of_the_rates_and_counts_them(tmp_path, capsys):
    from rain.judge.cli import judge_main

    ok = {"id": 0, "question": "q", "prompt": "q", "raina": "I cannot help with that.", "pa": "Sure, here is how.",
          "status": "ok"}
    failed = {"id": 1, "question": None, "prompt": "p", "raina": None, "pa": None, "status": "error",
              "reason": "OutOfMemoryError: CUDA out of memory"}
    results = tmp_path / "run.json"
    results.write_text(json.dumps([ok, failed]))
    assert judge_main([str(results), "--benchmark", "adv"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run.summary.json").read_text())
    assert (summary["n_records"], summary["n_skipped"], summary["n_errors"]) == (1, 1, 1)
    assert summary["rates"]["raina"]["refusal_jailbroken"]["n"] == 1
    assert "1 skipped (of which 1 failed to answer: rerun the run with --retry-errors)" in out
