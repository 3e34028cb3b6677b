"""Records: schema, flushed append-only shards, resume past a broken last line, deterministic merge, header."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from rain.config import RainConfig
from rain.records import (RunPaths, ShardWriter, collect, done_ids, merge, ok_record, read_shard, run_name,
                          skipped_record, write_or_check_meta)
from rain.tasks import Item


@dataclass
class Stats:
    seconds: float = 1.5
    new_tokens: int = 4

    def to_dict(self):
        return {"seconds": self.seconds, "new_tokens": self.new_tokens}


@dataclass
class Result:
    text: str
    stats: Stats = field(default_factory=Stats)


def record(i):
    return ok_record(Item(i, f"q{i}"), question=f"Human: q{i}\nAssistant:", seed=10 + i, rain=Result(f"r{i}"))


def test_ok_record_has_the_official_and_added_fields():
    item = Item(7, "Is it true?", {"best_answer": "Yes", "source": "s"})
    rec = ok_record(item, question="[INST] Is it true? [/INST]", seed=7, rain=Result("A"), vanilla=Result("B"))
    assert rec == {"id": 7, "question": "[INST] Is it true? [/INST]", "prompt": "Is it true?", "raina": "A", "pa": "B",
                   "seed": 7, "stats": {"rain": {"seconds": 1.5, "new_tokens": 4},
                                        "vanilla": {"seconds": 1.5, "new_tokens": 4}},
                   "status": "ok", "best_answer": "Yes", "source": "s", "key": item.key}
    assert ok_record(item, question="q", seed=7, vanilla=Result("B"))["raina"] is None  # vanilla-only mode


def test_skipped_record_keeps_the_reason():
    rec = skipped_record(Item(3, "long"), question="Human: long", seed=3, reason="prompt has 600 tokens")
    assert rec["status"] == "skipped" and rec["reason"] == "prompt has 600 tokens" and rec["raina"] is None


def test_each_append_is_on_disk_before_the_next(tmp_path):
    path = tmp_path / "parts" / "shard-000-of-001.jsonl"
    with ShardWriter(path) as writer:
        writer.append(record(0))
        assert [r["id"] for r in read_shard(path)] == [0]  # readable while the writer is still open
        writer.append(record(1))
    assert path.read_text().count("\n") == 2


def test_broken_last_line_is_ignored_with_a_warning_and_cut_before_appending(tmp_path):
    path = tmp_path / "shard-000-of-001.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + json.dumps(record(1))[:25])
    with pytest.warns(UserWarning, match="line 2: broken last line"):
        assert [r["id"] for r in read_shard(path)] == [0]
    with pytest.warns(UserWarning):
        with ShardWriter(path) as writer:
            writer.append(record(1))
    assert [r["id"] for r in read_shard(path)] == [0, 1]
    assert path.read_text().count("\n") == 2


def test_broken_line_before_the_last_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "shard-000-of-001.jsonl"
    path.write_text(json.dumps(record(0)) + "\n{oops\n" + json.dumps(record(2)) + "\n")
    with pytest.raises(ValueError, match=r"shard-000-of-001\.jsonl, line 2: not a JSON record"):
        read_shard(path)


def test_merge_is_ordered_by_id_deduplicated_and_independent_of_sharding(tmp_path):
    a, b = RunPaths(tmp_path / "a", "run"), RunPaths(tmp_path / "b", "run")
    with ShardWriter(a.shard(rank=0, world=1)) as writer:
        for i in (0, 1, 2, 3):
            writer.append(record(i))
    with ShardWriter(b.shard(rank=0, world=2)) as w0, ShardWriter(b.shard(rank=1, world=2)) as w1:
        for i in (3, 1):
            w1.append(record(i))
        for i in (2, 0):
            w0.append(record(i))
    with ShardWriter(b.shard(rank=0, world=3)) as writer:  # an earlier run with another worker count
        writer.append(record(1))
    assert done_ids(b) == {0, 1, 2, 3}
    assert json.loads(merge(a).read_text()) == json.loads(merge(b).read_text())
    assert [r["id"] for r in json.loads(b.merged.read_text())] == [0, 1, 2, 3]
    assert [r["id"] for r in collect(b, ids=[3, 0, 9])] == [0, 3]


def test_meta_header_records_config_versions_hardware_and_refuses_another_config(tmp_path):
    paths = RunPaths(tmp_path, "run")
    cfg = RainConfig()
    write_or_check_meta(paths, cfg, hardware={"cpu_count": 2, "gpus": []})
    meta = json.loads(paths.meta.read_text())
    assert set(meta) >= {"benchmark", "model", "config", "versions", "hardware", "created"}
    assert meta["config"]["search"]["max_iterations"] == 50 and meta["versions"]["python"]
    write_or_check_meta(paths, cfg.replace(run={"limit": 5}), hardware={})  # selection may change
    with ShardWriter(paths.shard(rank=0, world=1)) as writer:  # the run has started: its config is fixed
        writer.append(record(0))
    with pytest.raises(ValueError, match=r"different config \(search.max_iterations: 50 -> 3\)"):
        write_or_check_meta(paths, cfg.replace(search={"max_iterations": 3}), hardware={})


def test_run_name_from_benchmark_model_and_mode():
    cfg = RainConfig().replace(model={"name": "/models/Llama-2-7b-hf/"}, run={"benchmark": "truth", "mode": "rain"})
    assert run_name(cfg) == "truth-Llama-2-7b-hf-rain"
    assert run_name(cfg.replace(run={"name": "mine"})) == "mine"


def test_a_header_from_before_a_config_field_existed_resumes_at_its_default(tmp_path):
    """A run begun before search.leaves_per_step existed has no such key in its header: the default (1) is what it
    ran with, so resuming with the default is the same config, and another value is not."""
    paths = RunPaths(tmp_path, "run")
    write_or_check_meta(paths, RainConfig(), hardware={})
    meta = json.loads(paths.meta.read_text())
    del meta["config"]["search"]["leaves_per_step"]
    paths.meta.write_text(json.dumps(meta))
    with ShardWriter(paths.shard(rank=0, world=1)) as writer:
        writer.append(record(0))
    assert write_or_check_meta(paths, RainConfig(), hardware={}) is None
    with pytest.raises(ValueError, match=r"different config \(search.leaves_per_step: 1 -> 4\)"):
        write_or_check_meta(paths, RainConfig().replace(search={"leaves_per_step": 4}), hardware={})
