"""Class 1: resume is keyed by each prompt's content, never by its id alone.

The run header holds a fingerprint of the whole prompt list; a data file that changed under a run
is refused with a message saying what changed and how to start a new run, unless every finished
record still matches its prompt (then exactly the new prompts are answered). Records of one prompt
are never counted, merged or reported under another prompt's id.
"""

from __future__ import annotations

import json

from launch_helpers import hh_file, shard_records
from rain.config import load_config
from rain.parallel import launch
from rain.records import RunPaths, collect, done_ids
from rain.tasks import load_items


def cfg_for(tmp_path, data, *extra):
    return load_config(None, [f"run.data={data}", f"run.outdir={tmp_path / 'out'}", "run.name=t", *extra])


def go(cfg) -> int:
    return launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05)


QUESTIONS = [f"question number {i}?" for i in range(5)]


def test_the_issue_example_a_grown_data_file_is_refused_with_what_changed(tmp_path, fake_env, capsys):
    """3 prompts with --limit 3, then 2 appended and rerun without the limit (default shuffle 42)."""
    data = hh_file(tmp_path / "hh.jsonl", QUESTIONS[:3])
    assert go(cfg_for(tmp_path, data, "run.limit=3")) == 0
    before = shard_records(tmp_path / "out", "t")
    merged_before = (tmp_path / "out" / "t.json").read_text()
    hh_file(data, QUESTIONS)
    capsys.readouterr()
    assert go(cfg_for(tmp_path, data)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("rain: error:") == 1
    assert "the prompts changed since this run started: it had 3 prompts" in err and "now 5" in err
    assert "finished records belong to prompts that are now different or gone" in err
    assert "--name NEW or --outdir DIR" in err
    assert shard_records(tmp_path / "out", "t") == before  # nothing lost, nothing added
    assert (tmp_path / "out" / "t.json").read_text() == merged_before
    # the advice works: a new run answers each of the 5 prompts once, each under its own id
    assert go(cfg_for(tmp_path, data, "run.name=t2")) == 0
    merged = json.loads((tmp_path / "out" / "t2.json").read_text())
    items = load_items(cfg_for(tmp_path, data).run)
    assert [(r["id"], r["prompt"]) for r in merged] == [(i.id, i.prompt) for i in items]


def test_prompts_appended_in_file_order_answer_exactly_the_new_ones(tmp_path, fake_env, capsys):
    data = hh_file(tmp_path / "hh.jsonl", QUESTIONS[:3])
    assert go(cfg_for(tmp_path, data, "run.shuffle_seed=null")) == 0
    hh_file(data, QUESTIONS)
    capsys.readouterr()
    assert go(cfg_for(tmp_path, data, "run.shuffle_seed=null")) == 0
    out = capsys.readouterr().out
    assert "every finished record still matches its prompt" in out and "2 prompts to answer" in out
    records = shard_records(tmp_path / "out", "t")
    assert sorted(r["id"] for r in records) == [0, 1, 2, 3, 4]  # each answered exactly once
    assert all(r["prompt"] == QUESTIONS[r["id"]] for r in records)
    meta = json.loads((tmp_path / "out" / "t.meta.json").read_text())
    assert meta["prompts"]["count"] == 5 and meta["prompts_before"][0]["count"] == 3


def test_an_edited_prompt_is_answered_again_and_its_old_record_never_merged(tmp_path, fake_env):
    """A run without a fingerprint in its header (e.g. made before fingerprints, or run_shard called directly):
    the records' content keys still keep each answer with its own prompt."""
    data = hh_file(tmp_path / "hh.jsonl", QUESTIONS[:3])
    cfg = cfg_for(tmp_path, data, "run.shuffle_seed=null")
    assert go(cfg) == 0
    meta = tmp_path / "out" / "t.meta.json"
    header = json.loads(meta.read_text())
    header.pop("prompts")
    meta.write_text(json.dumps(header))
    edited = QUESTIONS[:1] + ["a different question?"] + QUESTIONS[2:3]
    hh_file(data, edited)
    items = load_items(cfg.run)
    paths = RunPaths(tmp_path / "out", "t")
    assert done_ids(paths, items) == {0, 2} and done_ids(paths) == {0, 1, 2}
    assert go(cfg) == 0
    merged = json.loads(paths.merged.read_text())
    assert [r["prompt"] for r in merged] == edited
    assert "a different question?" in merged[1]["raina"]
    assert [r["prompt"] for r in collect(paths, items=items)] == edited
    assert len(shard_records(tmp_path / "out", "t")) == 4  # the stale record stays on disk, unused


def test_a_reordered_file_with_the_same_prompts_is_refused(tmp_path, fake_env, capsys):
    data = hh_file(tmp_path / "hh.jsonl", QUESTIONS[:3])
    assert go(cfg_for(tmp_path, data, "run.shuffle_seed=null")) == 0
    hh_file(data, list(reversed(QUESTIONS[:3])))
    assert go(cfg_for(tmp_path, data, "run.shuffle_seed=null")) == 2
    assert "ids 0, 2" in capsys.readouterr().err


def test_moving_the_data_file_is_not_a_config_change_when_its_content_is_the_same(tmp_path, fake_env):
    data = hh_file(tmp_path / "hh.jsonl", QUESTIONS[:3])
    assert go(cfg_for(tmp_path, data, "run.limit=2")) == 0
    moved = data.rename(tmp_path / "moved.jsonl")
    assert go(cfg_for(tmp_path, moved)) == 0
    assert sorted(r["id"] for r in shard_records(tmp_path / "out", "t")) == [0, 1, 2]
