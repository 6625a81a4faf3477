"""Gradient averaging on 2 CPU processes: pal_adapters' flat all-reduce vs DDP (Accelerate's
``prepare(model)`` with ``find_unused_parameters=True``), side by side, seconds per training step.

Each of 2 gloo processes builds the same random MiniLM-shaped BERT (6 layers, d_m 384) with PALs
in every layer for ``--tasks`` 2-class tasks, tuned backbone; every step trains one task (round
robin, as one-task batches do), ``--batch`` rows per process of length ``--length``, AdamW.
``flat``: backward, then ``distributed.all_reduce_gradients`` of every trainable parameter;
``ddp``: the model prepared by Accelerate as ``DistributedDataParallel(find_unused_parameters=True)``
(without it DDP fails from the second step on: the other tasks' parameters get no gradient).
``static_graph`` does not apply: the graph changes with the task. The two runs alternate, step by
step after warm-up, so that load on the machine falls on both alike.

    OMP_NUM_THREADS=1 python benchmarks/grad_sync.py           # launches 2 processes, ~2 min
    python benchmarks/grad_sync.py --smoke                     # tiny shape

Writes benchmarks/results/grad_sync[_smoke].json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MINILM_SHAPE,
    TINY_SHAPE,
    format_table,
    padded_inputs,
    run_metadata,
    run_on_processes,
    set_results_dir,
    summary,
    write_json,
)
from fsdp_memory import build  # noqa: E402


class Run:
    """One model, its optimizer and how its gradients are averaged; ``step(task)`` times a step."""

    def __init__(self, shape: dict[str, int], tasks: int, mode: str, batch: int, length: int):
        import torch
        from accelerate import Accelerator, DistributedDataParallelKwargs

        self.mode, self.tasks = mode, tasks
        model = build(shape, tasks)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        if mode == "ddp":
            acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
            model, optimizer = acc.prepare(model, optimizer)
        self.model, self.optimizer = model, optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.inputs = padded_inputs(batch, length, vocab=shape.get("vocab_size", 30522))
        self.labels = torch.zeros(batch, dtype=torch.long)

    def step(self, index: int) -> float:
        import torch.distributed as dist

        from pal_adapters.training.distributed import all_reduce_gradients

        dist.barrier()
        start = time.perf_counter()
        out = self.model(**self.inputs, labels=self.labels, task=f"task{index % self.tasks}")
        out.loss.backward()
        if self.mode == "flat":
            all_reduce_gradients(self.params, dist.get_world_size())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    shape = TINY_SHAPE if args.smoke else MINILM_SHAPE
    runs = {m: Run(shape, args.tasks, m, args.batch, args.length) for m in ("flat", "ddp")}
    times: dict[str, list[float]] = {m: [] for m in runs}
    for i in range(args.warmup + args.steps):
        for m, run in runs.items():
            t = run.step(i)
            if i >= args.warmup:
                times[m].append(t)
    if dist.get_rank() == 0:
        stats = {m: summary(v) for m, v in times.items()}
        print(format_table(["gradient sync", "median s/step", "q1", "q3"],
                           [[m, *(f"{stats[m][k]:.4f}" for k in ("median", "q1", "q3"))] for m in stats]))
        ratio = stats["ddp"]["median"] / stats["flat"]["median"]
        print(f"ddp / flat median: {ratio:.3f}")
        report = {**run_metadata(args.argv), "processes": dist.get_world_size(), "backend": "gloo", "shape": shape,
                  "tasks": args.tasks, "batch_per_process": args.batch, "length": args.length, "steps": args.steps,
                  "warmup": args.warmup, "seconds_per_step": times, "summary": stats, "ddp_over_flat": ratio}
        set_results_dir(args.results_dir)
        print(f"wrote {write_json('grad_sync_smoke.json' if args.smoke else 'grad_sync.json', report)}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--results-dir", default=None, help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args()
    run_on_processes(__file__, worker, args)


if __name__ == "__main__":
    main()
