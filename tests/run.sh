#!/usr/bin/env bash
# Install everything from scratch and run the test suite (what CI runs: .ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet torch==2.13.0      # the CPU wheel first, so nothing pulls a CUDA build
python3 -m pip install --quiet -e ".[dev,demo,serve,onnx]"
python3 -m pytest -q "$@"
