"""Shared fixtures: a tiny random Llama with an in-test tokenizer, saved once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Folder with a tiny byte-level-BPE Llama (loadable by rain.load_model)."""
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny-byte"), style="byte")


@pytest.fixture(scope="session")
def tiny_sp_dir(tmp_path_factory) -> Path:
    """Folder with a tiny SentencePiece-style (Metaspace) Llama."""
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny-sp"), style="sentencepiece")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark files in ../shared/data; tests using it skip when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def fake_env(monkeypatch):
    """Launched workers find tests/fake_answerer.py; CPU only; no scripted failures."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("FAKE_FAIL_IDS", raising=False)
    monkeypatch.delenv("FAKE_CRASH_IDS", raising=False)
