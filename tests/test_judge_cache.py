"""The append-only verdict cache: keys, persistence, torn writes."""

import json

import pytest

from rain.judge.cache import VerdictCache, verdict_key


def _entry(key: str, verdict=True) -> dict:
    return {"key": key, "judge": "j", "template": "t@1", "verdict": verdict, "unparseable": False, "raw": "r"}


def test_key_depends_on_judge_template_and_every_text():
    base = verdict_key(judge="gpt-4@u", template="hh_harmless@1", texts=("q", "a"))
    assert base == verdict_key(judge="gpt-4@u", template="hh_harmless@1", texts=("q", "a"))
    assert base != verdict_key(judge="gpt-4o@u", template="hh_harmless@1", texts=("q", "a"))
    assert base != verdict_key(judge="gpt-4@u", template="hh_harmless@2", texts=("q", "a"))
    assert base != verdict_key(judge="gpt-4@u", template="hh_harmless@1", texts=("q", "b"))
    assert base != verdict_key(judge="gpt-4@u", template="hh_harmless@1", texts=("qa", ""))


def test_verdicts_survive_a_reload(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = VerdictCache(path)
    cache.put(_entry("k1", True))
    cache.put(_entry("k2", False))
    reloaded = VerdictCache(path)
    assert len(reloaded) == 2
    assert reloaded.get("k2")["verdict"] is False
    assert reloaded.hits == 1


def test_last_entry_of_a_key_wins(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = VerdictCache(path)
    cache.put(_entry("k", None))
    cache.put(_entry("k", True))
    assert VerdictCache(path).get("k")["verdict"] is True


def test_torn_last_line_is_ignored_with_a_warning_and_appends_stay_readable(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps(_entry("k1")) + "\n" + '{"key": "k2", "verd', encoding="utf-8")
    with pytest.warns(UserWarning, match="corrupt last line"):
        cache = VerdictCache(path)
    assert len(cache) == 1
    cache.put(_entry("k3"))
    assert sorted(VerdictCache(path)._entries) == ["k1", "k3"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text("garbage\n" + json.dumps(_entry("k1")) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 is corrupt"):
        VerdictCache(path)


def test_memory_only_cache_writes_no_file(tmp_path):
    cache = VerdictCache(None)
    cache.put(_entry("k"))
    assert cache.get("k")["verdict"] is True
    assert list(tmp_path.iterdir()) == []
