"""Mixed-task batches: rows of T tasks at random vs the same batch all one task, next to PEFT LoRA.

For each method, a batch of 64 x 128 tokens (MiniLM, eval, no autograd) is run (a) all routed to
one task and (b) with its rows spread over T tasks at random, T in {1, 8, 32, 64}; the figure is
the median over rounds of (b)/(a), each pair timed back to back (common.paired_timings):

- pal_adapters, through ``MultiTaskModel(..., task_ids=)``: PAL (all layers, the paper's recipe),
  low-rank and LHUC, 64 tasks each (one classification head per task, included on both sides);
- PEFT LoRA r=8 (its default targets, query and value), 64 adapters, ``model(..., adapter_names=)``
  (PEFT's mixed-batch inference) vs ``set_adapter`` + a plain forward, on the same backbone.

Targets (issue 10): ours <= 1.05x at T=8, <= 1.10x at T=64, and never above PEFT's ratio.

    python benchmarks/mixed_batch.py                # ~10 min on the 2-core CPU, 1 thread
    python benchmarks/mixed_batch.py --quick        # ~3 min: length 64, 3 rounds
    python benchmarks/mixed_batch.py --device cuda --dtype bf16

Writes benchmarks/results/mixed_batch[_<device>_<dtype>].json and a PNG of ratio vs T.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    add_speed_args,
    configure_device,
    format_table,
    minilm_backbone,
    padded_inputs,
    pair_ratios,
    paired_timings,
    randomize_,
    resolve_speed_args,
    run_metadata,
    save_plot,
    steady_malloc_reexec,
    summary,
    torch_dtype,
    write_json,
)

from pal_adapters import PRESETS, add_pal  # noqa: E402

METHODS = {"pal": PRESETS["pal"], "low_rank": PRESETS["low_rank"], "lhuc": PRESETS["lhuc"]}
TARGETS = {8: 1.05, 64: 1.10}


def task_ids_for(batch: int, tasks: int, seed: int = 2) -> torch.Tensor:
    """Row -> task index, uniformly at random over ``tasks`` tasks, each task present at least once."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tasks, (batch,), generator=g)
    ids[torch.randperm(batch, generator=g)[:tasks]] = torch.arange(tasks)
    return ids


def ours(backbone, method: str, num_tasks: int, device, dtype, compile_model: bool):
    model = add_pal(copy.deepcopy(backbone), {f"task{i}": 2 for i in range(num_tasks)}, adapter=METHODS[method])
    randomize_(model, "pal_adapters.")
    model = model.to(device=device, dtype=dtype).eval()
    run = torch.compile(model) if compile_model else model

    def one(x):
        return lambda: run(**x, task="task0")

    def mixed(x, ids):
        return lambda: run(**x, task_ids=ids)

    return one, mixed


def peft_lora(backbone, num_tasks: int, device, dtype, compile_model: bool):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0)  # default BERT targets: query, value
    model = get_peft_model(copy.deepcopy(backbone), config, adapter_name="task0")
    for i in range(1, num_tasks):
        model.add_adapter(f"task{i}", config)
    randomize_(model, "lora_")
    model = model.to(device=device, dtype=dtype).eval()
    model.set_adapter("task0")
    run = torch.compile(model) if compile_model else model

    def one(x):
        return lambda: run(**x)

    def mixed(x, ids):
        names = [f"task{i}" for i in ids.tolist()]
        return lambda: run(**x, adapter_names=names)

    return one, mixed


def measure(factory, x, ts: list[int], rounds: int, seed: int) -> dict[str, Any]:
    """Median mixed/one-task ratio per T, timed in pairs."""
    one, mixed = factory
    cases = {f"T={t}": (mixed(x, task_ids_for(x["input_ids"].shape[0], t).to(x["input_ids"].device)), None)
             for t in ts}
    pairs = paired_timings((one(x), None), cases, rounds=rounds, warmup=1, seed=seed)
    return {name: {"one_task_s": summary(p["reference"]), "mixed_s": summary(p["case"]),
                   "ratio": summary(pair_ratios(p))} for name, p in pairs.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 32, 64])
    add_speed_args(p, rounds=7)
    p.add_argument("--methods", nargs="+", default=[*METHODS, "peft_lora"])
    return resolve_speed_args(p.parse_args(argv), "mixed_batch", dict(batch=8, length=16, rounds=1, tasks=[1, 8]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    steady_malloc_reexec(args.system_malloc or args.device != "cpu")
    device = configure_device(args.device, args.threads, args.clock)
    dtype = torch_dtype(args.dtype)
    backbone, described = minilm_backbone(args.smoke)
    x = padded_inputs(args.batch, args.length, device)
    num_tasks = max(args.tasks)
    results: dict[str, Any] = {}
    for method in args.methods:
        print(f"{method}: {num_tasks} tasks, T in {args.tasks}", file=sys.stderr)
        try:
            factory = (peft_lora(backbone, num_tasks, device, dtype, args.compile) if method == "peft_lora"
                       else ours(backbone, method, num_tasks, device, dtype, args.compile))
            with torch.inference_mode():
                results[method] = measure(factory, x, args.tasks, args.rounds, seed=0)
        except Exception as err:  # e.g. PEFT missing: the others still report
            print(f"{method} failed: {type(err).__name__}: {err}", file=sys.stderr)
            results[method] = {"error": f"{type(err).__name__}: {err}"}
    report = {**run_metadata(), "backbone": described, "batch": args.batch, "length": args.length,
              "dtype": args.dtype, "device": args.device, "compile": args.compile, "rounds": args.rounds,
              "clock": args.clock,
              "targets": {f"T={t}": v for t, v in TARGETS.items()}, "results": results,
              "checks": checks(results, args.tasks)}
    print(render(results, args.tasks))
    for line in report["checks"]:
        print(line)
    print(f"wrote {write_json(args.output, report)}")
    plot(results, args.tasks, args.output.replace(".json", ".png"), args)
    return report


def ratio(results: dict[str, Any], method: str, t: int) -> float | None:
    row = results.get(method, {}).get(f"T={t}")
    return row["ratio"]["median"] if row else None


def checks(results: dict[str, Any], ts: list[int]) -> list[str]:
    lines = []
    for method in METHODS:
        for t in ts:
            r, peft = ratio(results, method, t), ratio(results, "peft_lora", t)
            if r is None:
                continue
            verdicts = []
            if t in TARGETS:
                verdicts.append(f"<= {TARGETS[t]:.2f}x " + ("ok" if r <= TARGETS[t] else "MISSED"))
            if peft is not None:
                verdicts.append(f"vs PEFT {peft:.3f}x " + ("ok" if r <= peft else "ABOVE PEFT"))
            if verdicts:
                lines.append(f"{method} T={t}: {r:.3f}x; " + "; ".join(verdicts))
    return lines


def render(results: dict[str, Any], ts: list[int]) -> str:
    header = ["method", "one task ms", *(f"T={t}" for t in ts)]
    rows = []
    for method, res in results.items():
        if "error" in res:
            rows.append([method, res["error"][:40], *("" for _ in ts)])
            continue
        one = statistics.median(res[f"T={t}"]["one_task_s"]["median"] for t in ts)
        rows.append([method, f"{1000 * one:.1f}", *(f"{ratio(results, method, t):.3f}x" for t in ts)])
    return format_table(header, rows)


def plot(results: dict[str, Any], ts: list[int], name: str, args: argparse.Namespace) -> None:
    def draw(ax):
        for method, res in results.items():
            if "error" not in res:
                ax.plot(ts, [ratio(results, method, t) for t in ts], marker="o",
                        linestyle="--" if method == "peft_lora" else "-", label=method)
        for t, v in TARGETS.items():
            ax.plot([t], [v], marker="_", markersize=18, color="red")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tasks in the batch (T)")
        ax.set_ylabel("mixed / one-task time")
        ax.set_title(f"batch {args.batch}x{args.length}, {args.device} {args.dtype} (red: targets)")
        ax.legend()

    path = save_plot(name, draw)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
