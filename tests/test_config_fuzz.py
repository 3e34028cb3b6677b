"""The config loader under random input (Hypothesis): any YAML file, any text, any override gives a RainConfig
or one ValueError line naming the file, key or value; never a traceback of another kind."""

from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rain.config import RainConfig, load_config

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = {name: [f.name for f in fields(getattr(RainConfig(), name))] for name in RainConfig().to_dict()}
TRICKY = st.sampled_from(["yes", "No", "on", "1e-40", ".inf", "-.inf", ".nan", "cuda:abc", "cuda:1", "[Yes]", "",
                          "~", "0x10", "2024-01-01", "A", "B", "C"])
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12) | TRICKY
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=2), max_leaves=6)


def section_strategy(name: str) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(SECTIONS[name] + ["bogus"]), values, max_size=4)


documents = st.fixed_dictionaries({}, optional={name: section_strategy(name) | values for name in SECTIONS}) | values


def check(load) -> None:
    try:
        cfg = load()
    except (ValueError, FileNotFoundError) as err:
        assert str(err) and "\n" not in str(err), str(err)
        return
    assert isinstance(cfg, RainConfig)


@FUZZ
@given(document=documents)
def test_hypothesis_random_yaml_configs(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        check(lambda: load_config(path))


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=100))
def test_hypothesis_random_config_text(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        check(lambda: load_config(path))


keys = st.sampled_from([f"{s}.{f}" for s, names in SECTIONS.items() for f in names] + ["temperature", "bogus", "a.b"])


@FUZZ
@given(overrides=st.lists(st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=15) | TRICKY)
                          | st.text(max_size=20), max_size=4))
def test_hypothesis_random_overrides(overrides):
    check(lambda: load_config(None, overrides))


@pytest.mark.parametrize("text", ["defaults: base.yaml\n", "defaults: [1]\n", "defaults: {a: 1}\n",
                                  "search:\n", "search: [1, 2]\n", "[1, 2]\n", "search: {1: 2, x: 3}\n"])
def test_odd_structures_are_named(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    check(lambda: load_config(path))
