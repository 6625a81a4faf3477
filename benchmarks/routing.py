"""Routing speed on the packaged MiniLM encoder (all-MiniLM-L6-v2: 6 layers, d_m 384).

Two questions, each measured side by side with interleaved repeats (see common.py):

1. Mixed-task batches: a batch of 64 × 128 tokens whose rows belong to 8 tasks at random
   (``task_ids=``) against the same batch routed to one task (``task=``), PALs in the top half.
   Target ≤ 1.05x
   (PEFT's mixed-adapter LoRA batches measure 1.03–1.05x on this machine).
2. All tasks for one input: ``predict_all`` (8 tasks) against a loop of 8 per-task forwards,
   batch 8 × 128, PALs in the top half (target ≥ 2.2x faster; the cost model of GUIDE §4 gives
   8 / (0.5 + 0.5·8) = 1.78x from sharing the bottom half alone, the rest comes from running the
   top half at 8x the batch) and in all layers (target: not slower than the loop). The first
   adapted layer is shared too (see pal_adapters/replicate.py): 6 layers, PALs in layers 3-5 ->
   4 shared layers + 8 x 2 -> 48 / 20 = 2.4x at best; in all layers 48 / 41 = 1.17x.

    python benchmarks/routing.py            # ~4 minutes on 2 cores
    python benchmarks/routing.py --quick    # ~1 minute profile

Writes benchmarks/results/routing.json.
"""

from __future__ import annotations

import argparse
import os

import torch
from common import (
    format_table,
    pair_ratios,
    paired_timings,
    run_metadata,
    set_clock,
    steady_malloc_reexec,
    summary,
    write_json,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pal_adapters import AdapterConfig, add_pal  # noqa: E402
from pal_adapters.training.setup import load_backbone  # noqa: E402

TASKS = 8


def build(layers: str):
    backbone, _ = load_backbone("minilm")
    adapter = AdapterConfig(kind="pal", output_activation="gelu", layers=layers)
    model = add_pal(backbone, {f"task{i}": 2 for i in range(TASKS)}, adapter=adapter).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-identity adapters, so nothing is skipped as a no-op
        for name, p in model.named_parameters():
            if "pal_adapters." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def inputs(batch: int, length: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[::3, length * 3 // 4:] = 0  # some padded rows
    return {"input_ids": ids, "attention_mask": mask}


def mixed_case(model, batch: int, length: int, rounds: int) -> dict:
    x = inputs(batch, length)
    task_ids = torch.randint(0, TASKS, (batch,), generator=torch.Generator().manual_seed(2))

    def one_task():
        model(**x, task="task0")

    def mixed():
        model(**x, task_ids=task_ids)

    pairs = paired_timings((one_task, None), {"mixed": (mixed, None)}, rounds)["mixed"]
    return {"one_task_s": summary(pairs["reference"]), "mixed_s": summary(pairs["case"]),
            "ratio": summary(pair_ratios(pairs))}


def all_tasks_case(model, batch: int, length: int, rounds: int) -> dict:
    x = inputs(batch, length)

    def loop():
        for t in model.task_names:
            model(**x, task=t)

    def every():
        model.predict_all(**x)

    pairs = paired_timings((loop, None), {"predict_all": (every, None)}, rounds)["predict_all"]
    speedups = [1 / r for r in pair_ratios(pairs)]
    return {"loop_s": summary(pairs["reference"]), "predict_all_s": summary(pairs["case"]),
            "speedup": summary(speedups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter sequences")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is the stable choice on a shared 2-core machine)")
    parser.add_argument("--system-malloc", action="store_true", help="do not re-run under STEADY_MALLOC (common.py)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or this process's CPU time (robust on a busy shared machine)")
    args = parser.parse_args()
    steady_malloc_reexec(args.system_malloc)
    set_clock(args.clock)
    torch.set_num_threads(args.threads)
    rounds, length = (3, 64) if args.quick else (args.rounds, 128)
    torch.set_grad_enabled(False)
    results = {}
    top = build("top_half")
    results["mixed_batch_64"] = mixed_case(top, 64, length, rounds)
    results["predict_all_top_half"] = all_tasks_case(top, 8, length, rounds)
    del top
    results["predict_all_all_layers"] = all_tasks_case(build("all"), 8, length, rounds)
    rows = [
        ["mixed batch (64, 8 tasks) / one task", f"{results['mixed_batch_64']['ratio']['median']:.3f}x", "<= 1.05x"],
        ["predict_all speed-up, PAL top half", f"{results['predict_all_top_half']['speedup']['median']:.2f}x",
         ">= 2.2x"],
        ["predict_all speed-up, PAL all layers", f"{results['predict_all_all_layers']['speedup']['median']:.2f}x",
         ">= 1.0x"],
    ]
    print(format_table(["measure (median of interleaved rounds)", "measured", "target"], rows))
    path = write_json("routing.json" if not args.quick else "routing_quick.json",
                      {**run_metadata(), "threads": args.threads, "clock": args.clock,
                       "malloc": os.environ.get("GLIBC_TUNABLES", "system"), "seq_len": length, "rounds": rounds,
                       "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
