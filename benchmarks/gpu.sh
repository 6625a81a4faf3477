#!/usr/bin/env bash
# The GPU profile of issue 10, runnable as is on one H100 (no network there), in under 10 minutes:
# the speed benchmarks at --device cuda in fp32 and bf16, eager and torch.compile, peak training
# memory, and a short bf16-vs-fp32 mixed-batch training check. Every step is time-boxed (9 min in
# all at most) and may fail without stopping the others; a summary of what ran is printed at the end.
#
#   bash benchmarks/gpu.sh                    # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --fetch-wheels     # HERE (with PyPI): wheels of what the GPU image lacks
#                                             # into .whl/ (add .whl/ to .git/info/exclude; carry it)
#
# Outputs go to $OUT/bench (or benchmarks/results/gpu/ when OUT is unset): JSON, PNG and logs.
# Python packages: the GPU image has torch, transformers, peft and matplotlib but not `datasets`
# or `seqeval`, which `import pal_adapters` needs; they are installed from .whl/ when it is there
# (pip --no-index: nothing is downloaded on the GPU machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    for name in datasets dill multiprocess; do  # the versions installed here, which pal_adapters is tested with
        pkg="$name==$(python -c "import importlib.metadata as m; print(m.version('$name'))")"
        python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl "$pkg" \
          || python -m pip download -q --no-deps --only-binary=:all: -d .whl "$pkg"
    done
    python -m pip wheel -q --no-deps -w .whl seqeval==1.2.2   # source-only on PyPI: build a pure-Python wheel
    ls -la .whl
    exit 0
fi

out="${OUT:-benchmarks/results/gpu}/bench"
mkdir -p "$out"
export PAL_BENCH_RESULTS="$out" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
status="$out/summary.txt"
: > "$status"

if ! "$PY" -c "import pal_adapters" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pal_adapters" 2> "$out/import_error.log"; then
    echo "import pal_adapters failed (see import_error.log); run 'bash benchmarks/gpu.sh --fetch-wheels' where PyPI is reachable and carry .whl" | tee -a "$status"
    tail -3 "$out/import_error.log"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record ok/FAILED
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%-34s %s (%ss)\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" "$((SECONDS - start))" | tee -a "$status"
    tail -n 25 "$out/$name.log" | grep -v '^  round' || true
}

B=benchmarks
step train_check_bf16            75 "$PY" $B/train_check.py --device cuda
for dt in fp32 bf16; do
    step "overhead_${dt}"              45 "$PY" $B/overhead.py --device cuda --dtype $dt --threads 1 --repeats 10 --batch 8 --seq 128 --output overhead.json
    step "mixed_batch_${dt}"           60 "$PY" $B/mixed_batch.py --device cuda --dtype $dt --rounds 5
    step "multitask_inference_${dt}"   45 "$PY" $B/multitask_inference.py --device cuda --dtype $dt --rounds 5 --no-adapterhub
done
step overhead_bf16_compile          90 "$PY" $B/overhead.py --device cuda --dtype bf16 --compile --threads 1 --repeats 5 --output overhead.json
step memory_cuda                     75 "$PY" $B/memory.py --device cuda --batch 16 --steps 2
# FSDP2 at world size 1 on the GPU (NCCL, one-process group): the 5 training cases of tests/test_fsdp.py,
# sharded, then unsharded; their weights must agree (1e-4: GPU kernels are not the CPU's).
fsdp_smoke() {
    local d="$out/fsdp"; rm -rf "$d"; mkdir -p "$d/fsdp" "$d/none"
    "$PY" -c "import json,sys; sys.path.insert(0,'tests'); from pathlib import Path; from helpers import write_toy_tasks; \
Path('$d/tasks.json').write_text(json.dumps(write_toy_tasks(Path('$d/data'))))" &&
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 tests/scripts/train_cases.py "$d/tasks.json" "$d/fsdp" fsdp &&
    "$PY" tests/scripts/train_cases.py "$d/tasks.json" "$d/none" none &&
    "$PY" -c "from safetensors.torch import load_file as f; import sys; \
c = ['one_task', 'mixed_accum', 'mixed_small_frozen', 'mixed_two_rows', 'mixed_resume']; \
e = {k: max((f(f'$d/fsdp/{k}.safetensors')[n] - v).abs().max().item() for n, v in f(f'$d/none/{k}.safetensors').items()) for k in c}; \
print('max |fsdp - none|', e); sys.exit(max(e.values()) > 1e-4)"
}
export -f fsdp_smoke; export PY out  # `timeout` runs programs, not functions
step fsdp_1gpu                      150 bash -c fsdp_smoke
echo "---- summary ----"; cat "$status"
ls "$out"
