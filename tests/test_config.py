"""Config loading: defaults equal base.yaml, overrides, and errors that name the bad key or value."""

from pathlib import Path

import pytest

from rain.config import RainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_base_yaml_lists_every_default():
    assert load_config(CONFIGS / "base.yaml") == RainConfig()
    text = (CONFIGS / "base.yaml").read_text()
    for key in RainConfig().to_dict()["search"]:
        assert f"  {key}:" in text, key


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    load_config(CONFIGS / name)


def test_overrides_by_section_or_unique_field():
    cfg = load_config(None, ["search.min_visits=5", "temperature=2", "segment_lengths=[1,2]", "run.limit=3"])
    assert (cfg.search.min_visits, cfg.search.temperature, cfg.search.segment_lengths) == (5, 2.0, (1, 2))
    assert cfg.run.limit == 3


def test_defaults_chain_and_later_files_win(tmp_path):
    (tmp_path / "a.yaml").write_text("search:\n  min_visits: 3\n  seed: 7\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\nsearch:\n  seed: 9\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.search.min_visits, cfg.search.seed) == (3, 9)


def test_unknown_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key search\.min_visit;.*search\.min_visits"):
        load_config(None, ["search.min_visit=3"])
    (tmp_path / "c.yaml").write_text("serch:\n  seed: 1\n")
    with pytest.raises(ValueError, match=r"c\.yaml: unknown section 'serch'"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("override, message", [
    ("value_threshold=3", "search.value_threshold must be in [-1, 1], got 3.0"),
    ("min_visits=abc", "search.min_visits must be an int, got 'abc'"),
    ("engine=turbo", "search.engine must be cached or reference, got 'turbo'"),
    ("segment_lengths=[0]", "search.segment_lengths must be a non-empty list of integers >= 1, got [0]"),
    ("judge.good_options=[A]", "judge.good_options must be a list of 2 (one per options file), got ['A']"),
])
def test_out_of_range_values_are_named(override, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
