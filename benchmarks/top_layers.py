"""All tasks for one input with task layers on top of the encoder: ``predict_all`` vs a per-task loop.

PALs §3.2: with task-specific functions only on top (``top_layer``: a transformer layer per task;
``top_attention``: projected attention, 6 attention layers in d_s), the encoder's layers are the
same for every task, so ``predict_all`` runs the encoder ONCE and each task's top once, where the
loop of ``model(..., task=t)`` runs the encoder T times. The speed-up approaches T as the encoder
dominates: the ``bound`` column is what one encoder pass plus T tops and heads would give, from the
measured cost of one task's top and head relative to the encoder (``top+head / encoder``).
MiniLM (the packaged all-MiniLM-L6-v2), batch 8 (eval, no autograd), T = 8 tasks, both
sides timed back to back in every round (interleaved, shuffled), medians over rounds.

    python benchmarks/top_layers.py --quick --clock cpu   # ~1 min on the 2-core CPU, 1 thread: length 64, 3 rounds
    python benchmarks/top_layers.py --clock cpu           # ~2 min: length 128, 5 rounds

Writes benchmarks/results/top_layers[_quick].json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from contextlib import contextmanager
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
    steady_malloc_reexec,
    summary,
    torch_dtype,
    write_json,
)

from pal_adapters import PRESETS, add_pal  # noqa: E402

KINDS = ("top_layer", "top_attention")


def measure(backbone, kind: str, t: int, x: dict, rounds: int, device, dtype) -> dict[str, Any]:
    """Loop of per-task forwards (reference) against one ``predict_all`` over the same ``t`` tasks."""
    names = [f"task{i}" for i in range(t)]
    model = add_pal(copy.deepcopy(backbone), {n: 2 for n in names}, adapter=PRESETS[kind])
    randomize_(model, "pal_adapters.")  # no identity-initialised zeros
    model = model.to(device=device, dtype=dtype).eval()
    params = sum(p.numel() for n, p in model.named_parameters() if "pal_adapters.task0." in n)
    base = sum(p.numel() for n, p in model.backbone.named_parameters() if "pal_adapters." not in n)

    def loop():
        for name in names:
            model(**x, task=name)

    def every():
        model.predict_all(tasks=names, **x)

    cases = {"predict_all": (every, None), "encoder": (lambda: model.backbone(**x), lambda: bare(model)),
             "one_task": (lambda: model(**x, task=names[0]), None)}
    with torch.inference_mode():
        timed = paired_timings((loop, None), cases, rounds=rounds)
    pairs = timed["predict_all"]
    # Each relative to the loop of the same round (the noise of a shared machine cancels), then medians.
    encoder, one = (statistics.median(pair_ratios(timed[k])) for k in ("encoder", "one_task"))
    # What predict_all could reach if it cost exactly one encoder pass plus t tops and heads.
    bound = t * one / (encoder + t * max(one - encoder, 0.0))
    return {"params_per_task": params, "params_per_task_vs_base": params / base,
            "loop_s": summary(pairs["reference"]), "predict_all_s": summary(pairs["case"]),
            "speedup": summary([1 / r for r in pair_ratios(pairs)]),
            "encoder_vs_loop": encoder, "one_task_vs_loop": one, "top_and_head_vs_encoder": (one - encoder) / encoder,
            "speedup_bound": bound}


@contextmanager
def bare(model):
    """The encoder routed to no task: the shared part's own cost (no top, no head)."""
    with model.use_task(None):
        yield


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--tasks", type=int, default=8)
    add_speed_args(p, rounds=5)
    return resolve_speed_args(p.parse_args(argv), "top_layers", dict(batch=2, length=16, rounds=1, tasks=2))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    steady_malloc_reexec(args.system_malloc or args.device != "cpu")
    device = configure_device(args.device, args.threads, args.clock)
    backbone, described = minilm_backbone(args.smoke)
    x = padded_inputs(args.batch, args.length, device)
    results = {}
    for kind in KINDS:
        print(f"{kind}, T={args.tasks}", file=sys.stderr)
        results[kind] = measure(backbone, kind, args.tasks, x, args.rounds, device, torch_dtype(args.dtype))
    report = {**run_metadata(), "backbone": described, "batch": args.batch, "length": args.length,
              "tasks": args.tasks, "dtype": args.dtype, "device": args.device, "rounds": args.rounds,
              "clock": args.clock, "results": results}
    rows = [[kind, f"{r['params_per_task']} ({r['params_per_task_vs_base']:.3f}x base)",
             f"{r['loop_s']['median'] * 1e3:.1f}", f"{r['predict_all_s']['median'] * 1e3:.1f}",
             f"{r['speedup']['median']:.2f}x [{r['speedup']['q1']:.2f}, {r['speedup']['q3']:.2f}]",
             f"{r['top_and_head_vs_encoder']:.3f}", f"{r['speedup_bound']:.2f}x"]
            for kind, r in results.items()]
    print(format_table(["method", "params/task", "loop ms", "predict_all ms", f"speed-up at T={args.tasks}",
                        "top+head / encoder", "bound"], rows))
    print(f"wrote {write_json(args.output, report)}")
    return report


if __name__ == "__main__":
    main()
