#!/usr/bin/env bash
# The main job: the HH benchmark launcher on the embedded SmolLM2-135M-Instruct over the
# project's demo prompts (configs/demo.yaml: lowered budget, about 10 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd HH
exec ../.venv/bin/python allocation.py --config ../configs/demo.yaml --nump 2 "$@"
