"""A non-editable install (the built wheel, installed outside the checkout) runs `rain run HH` with the shipped
configs: the configs, the prompt templates and the demo prompts travel as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from launch_helpers import ROOT

SHIPPED = ["rain/configs/base.yaml", "rain/configs/hh.yaml", "rain/configs/adv.yaml", "rain/configs/truth.yaml",
           "rain/configs/demo.yaml", "rain/configs/models/embedded.yaml", "rain/prompts/hh_fewshot.txt",
           "rain/prompts/harm_instruction.txt", "rain/prompts/truth_options.txt", "rain/data/demo_prompts.jsonl"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from a copy of the checkout, installed with pip into a folder of its own."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "tests", "outputs", "__pycache__",
                                                                 "build", "*.egg-info", "bench"))
    wheels = work / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = list(wheels.glob("rain-*.whl"))
    target = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    return wheel, target


def test_the_wheel_carries_configs_prompts_and_demo_prompts(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names
    assert {f"rain/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= names


def test_rain_run_hh_from_an_installed_package_outside_the_checkout(installed, tmp_path, tiny_dir):
    _, target = installed
    environment = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import rain.config as c; print(c.__file__); print(c.config_dir())"],
                           cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60)
    module, configs = where.stdout.split()
    assert module.startswith(str(target)) and configs == str(target / "rain" / "configs")
    command = [sys.executable, "-m", "rain.cli", "run", "HH", "--config", "demo", "--model", str(tiny_dir),
               "--prompt.format=chat", "--limit", "1", "--search.max_new_tokens=3", "--search.max_iterations=2",
               "--search.min_fresh_iterations=1", "--outdir", "out"]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [record] = json.loads((tmp_path / "out" / "demo.json").read_text())
    first = json.loads((ROOT / "rain" / "data" / "demo_prompts.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and record["prompt"] in json.dumps(first)
    meta = json.loads((tmp_path / "out" / "demo.meta.json").read_text())
    assert meta["prompts"]["source"] == str(target / "rain" / "data" / "demo_prompts.jsonl")
