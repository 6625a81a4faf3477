#!/usr/bin/env bash
# Launch the demo run (examples/glue_pal.yaml) on several processes: one per GPU, or CPU processes (gloo).
#
#   bash examples/multi_gpu.sh accelerate                 # accelerate launch, one process per visible GPU
#   bash examples/multi_gpu.sh torchrun                   # the same with torchrun
#   bash examples/multi_gpu.sh fsdp                       # GPUs, FSDP2 sharding (examples/fsdp_accelerate.yaml)
#   NPROC=2 bash examples/multi_gpu.sh torchrun --set sharding=fsdp --max-steps 4   # FSDP2 on 2 CPU processes
#   NPROC=2 bash examples/multi_gpu.sh torchrun --max-steps 4 --set max_train_examples=64   # 2 CPU processes
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash examples/multi_gpu.sh multinode   # node 0; NODE_RANK=1 on node 1
#
# Arguments after the mode go to `pal-adapters train` (--max-steps, --output-dir, --set key=value, ...).
# A quick CPU check of the 2-process path takes ~1-2 min (the NPROC=2 line above).
#
# What to know:
# - batch_size in the run file is the GLOBAL batch: every process builds the same batch and keeps its
#   share of the rows, so it must be divisible by the number of processes (the demo's 32: 1, 2, 4, 8).
#   A run on k processes then matches a one-process run. Gradients are averaged by Accelerate's DDP
#   with find_unused_parameters (the default, 0.87x the s/step of the alternative), or by one flat
#   all-reduce after the backward with `--set grad_sync=flat` (docs/training.md, "Averaging gradients").
# - Sharding (`sharding: fsdp` in the run file, `--set sharding=fsdp`, or accelerate's FSDP config): FSDP2
#   splits parameters, gradients and optimizer state over the processes (0.50x per process at 2, MiniLM
#   shape, benchmarks/results/fsdp_memory.json); saves and checkpoints are those of a one-process run.
# - Without a GPU, torchrun and `accelerate launch --multi_gpu` both fall back to CPU processes with the
#   gloo backend. `accelerate launch --cpu --num_processes 2` starts only ONE process (accelerate 1.15).
# - Mixed precision: the run file's `mixed_precision` (or `--set mixed_precision=bf16`) wins; left unset
#   (null), the launcher's `--mixed_precision` or the value saved by `accelerate config` is used. bf16 needs
#   an Ampere or newer GPU (A100, H100, RTX 30xx+) and no loss scaling; fp16 works on older GPUs, with a
#   GradScaler.
#   On CPUs bf16 is only faster with AMX/AVX512-BF16; elsewhere keep "no".
# - `accelerate config` asks these questions once and writes ~/.cache/huggingface/accelerate/default_config.yaml;
#   afterwards a plain `accelerate launch -m pal_adapters.cli train examples/glue_pal.yaml` uses it. Choose
#   "multi-GPU" or FSDP (version 2) there; DeepSpeed is not wired up (accelerate would prepare the model).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODE=${1:-torchrun}
shift || true
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC=${NPROC:-$(( GPUS > 0 ? GPUS : 2 ))}            # processes on this machine
PORT=${PORT:-29500}
TRAIN=(-m pal_adapters.cli train examples/glue_pal.yaml "$@")

case "$MODE" in
  accelerate)
    accelerate launch --multi_gpu --num_processes "$NPROC" --main_process_port "$PORT" "${TRAIN[@]}" ;;
  torchrun)
    torchrun --standalone --nproc_per_node "$NPROC" "${TRAIN[@]}" ;;
  fsdp)
    accelerate launch --config_file examples/fsdp_accelerate.yaml --num_processes "$NPROC" \
      --main_process_port "$PORT" "${TRAIN[@]}" ;;
  multinode)
    # Run the same line on every node with its own NODE_RANK; MASTER_ADDR is node 0's address, reachable by all.
    : "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR (node 0)}"
    torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$PORT" \
      --nproc_per_node "$NPROC" "${TRAIN[@]}"
    # The accelerate equivalent (--num_processes counts the processes of ALL nodes):
    #   accelerate launch --multi_gpu --num_machines "$NNODES" --machine_rank "$NODE_RANK" --main_process_ip \
    #     "$MASTER_ADDR" --main_process_port "$PORT" --num_processes $((NNODES * NPROC)) "${TRAIN[@]}"
    ;;
  *)
    echo "usage: bash examples/multi_gpu.sh {accelerate|torchrun|fsdp|multinode} [pal-adapters train options]" >&2
    exit 2 ;;
esac
