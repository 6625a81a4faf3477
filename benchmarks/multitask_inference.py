"""All tasks for one input: ``predict_all`` vs a loop of per-task forwards, next to AdapterHub.

MiniLM, batch 8 x 128 (eval, no autograd), T in {1, 2, 4, 8, 16} tasks, PALs in all layers and
in the top half. Ours: ``MultiTaskModel.predict_all(tasks=...)`` (layers below the first adapted
one run once, the batch is replicated from there) against ``model(..., task=t)`` for each task.
AdapterHub (``adapters`` 1.3.0, its own venv: benchmarks/adapterhub_env.sh) is driven as a
subprocess (benchmarks/adapterhub_worker.py) in the same run, on the same backbone and batch:
``Parallel(*adapters)`` against a loop over ``set_active_adapters``. Its adapters are SEQUENTIAL
bottlenecks (``SeqBnConfig``, reduction factor 6: 295k parameters per task in all layers, PAL
265k; top half 147k vs PAL 172k), because ``Parallel`` crashes with parallel bottleneck
adapters. Speed-ups are medians over rounds of loop/all-at-once, each pair timed back to back.

Targets (issue 10), at T = 8: >= 2.2x top half, >= 1.1x all layers; above AdapterHub at every T.

    bash benchmarks/adapterhub_env.sh                   # once: the AdapterHub venv
    python benchmarks/multitask_inference.py            # ~8 min on the 2-core CPU, 1 thread
    python benchmarks/multitask_inference.py --quick    # ~3 min: length 64, 3 rounds
    python benchmarks/multitask_inference.py --device cuda --dtype bf16   # AdapterHub skipped
                                                        # where its venv is missing

Writes benchmarks/results/multitask_inference[...].json and a PNG of speed-up vs T.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    MINILM_SHAPE,
    TINY_SHAPE,
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

LAYERS = {"all": PRESETS["pal"], "top_half": PRESETS["pal_top_half"]}
TARGETS = {"all": 1.1, "top_half": 2.2}  # at T = TARGET_T
TARGET_T = 8
HERE = Path(__file__).resolve().parent


def ours(backbone, layers: str, tasks: list[int], x: dict, rounds: int, device, dtype) -> dict[str, Any]:
    names = [f"task{i}" for i in range(max(tasks))]
    model = add_pal(copy.deepcopy(backbone), {n: 2 for n in names}, adapter=LAYERS[layers])
    randomize_(model, "pal_adapters.")
    model = model.to(device=device, dtype=dtype).eval()
    params = sum(p.numel() for n, p in model.named_parameters() if "pal_adapters.task0." in n)
    out: dict[str, Any] = {"params_per_task": params}
    with torch.inference_mode():
        for t in tasks:
            chosen = names[:t]

            def loop(chosen=chosen):
                for name in chosen:
                    model(**x, task=name)

            def every(chosen=chosen):
                model.predict_all(tasks=chosen, **x)

            pairs = paired_timings((loop, None), {"predict_all": (every, None)}, rounds=rounds)["predict_all"]
            out[f"T={t}"] = {"loop_s": summary(pairs["reference"]), "predict_all_s": summary(pairs["case"]),
                             "speedup": summary([1 / r for r in pair_ratios(pairs)])}
    return out


def adapterhub(args: argparse.Namespace, backbone_path: str | None) -> dict[str, Any]:
    """Run adapterhub_worker.py in the AdapterHub venv; ``{"skipped": why}`` when there is none."""
    python = Path(os.environ.get("ADAPTERHUB_PYTHON", HERE / ".venv-adapterhub" / "bin" / "python"))
    if not python.exists():
        return {"skipped": f"no AdapterHub venv at {python}: run bash benchmarks/adapterhub_env.sh"}
    spec = {"tasks": args.tasks, "layers": list(LAYERS), "batch": args.batch, "length": args.length,
            "rounds": args.rounds, "threads": args.threads, "device": args.device, "dtype": args.dtype,
            "reduction_factor": 6, "path": backbone_path, "clock": args.clock,
            "shape": {**(TINY_SHAPE if args.smoke else MINILM_SHAPE)}}
    print("AdapterHub worker running ...", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([str(python), str(HERE / "adapterhub_worker.py"), json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    add_speed_args(p, rounds=5)
    p.add_argument("--no-adapterhub", action="store_true", help="ours only")
    smoke = dict(batch=2, length=16, rounds=1, tasks=[1, 2])
    return resolve_speed_args(p.parse_args(argv), "multitask_inference", smoke)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    steady_malloc_reexec(args.system_malloc or args.device != "cpu")
    device = configure_device(args.device, args.threads, args.clock)
    backbone, described = minilm_backbone(args.smoke)
    path = getattr(backbone, "name_or_path", None) or None
    path = path if path and Path(path).exists() else None
    x = padded_inputs(args.batch, args.length, device)
    results = {"ours": {}}
    for layers in LAYERS:
        print(f"ours, PAL {layers}", file=sys.stderr)
        results["ours"][layers] = ours(backbone, layers, args.tasks, x, args.rounds, device, torch_dtype(args.dtype))
    results["adapterhub"] = {"skipped": "--no-adapterhub"} if args.no_adapterhub else adapterhub(args, path)
    report = {**run_metadata(), "backbone": described, "batch": args.batch, "length": args.length,
              "dtype": args.dtype, "device": args.device, "rounds": args.rounds, "clock": args.clock,
              "targets": {"T": TARGET_T, **TARGETS}, "results": results, "checks": checks(results, args.tasks)}
    print(render(results, args.tasks))
    for line in report["checks"]:
        print(line)
    print(f"wrote {write_json(args.output, report)}")
    plot(results, args.tasks, args.output.replace(".json", ".png"), args)
    return report


def speedup(side: dict, layers: str, t: int) -> float | None:
    row = side.get(layers, {}).get(f"T={t}") if isinstance(side.get(layers), dict) else None
    return row["speedup"]["median"] if row else None


def checks(results: dict, ts: list[int]) -> list[str]:
    lines = []
    for layers in LAYERS:
        for t in ts:
            ours_x, hub = speedup(results["ours"], layers, t), speedup(results["adapterhub"], layers, t)
            verdicts = []
            if t == TARGET_T:
                verdicts.append(f">= {TARGETS[layers]:.2f}x " + ("ok" if ours_x >= TARGETS[layers] else "MISSED"))
            if hub is not None:
                verdicts.append(f"AdapterHub {hub:.2f}x " + ("ok" if ours_x > hub else "NOT ABOVE"))
            if verdicts:
                lines.append(f"{layers} T={t}: ours {ours_x:.2f}x; " + "; ".join(verdicts))
    return lines


def render(results: dict, ts: list[int]) -> str:
    rows = []
    for side in ("ours", "adapterhub"):
        for layers in LAYERS:
            values = [speedup(results[side], layers, t) for t in ts]
            if any(v is not None for v in values):
                params = results[side][layers].get("params_per_task", "")
                rows.append([f"{side} {layers}", str(params), *(f"{v:.2f}x" if v else "" for v in values)])
    if "skipped" in results["adapterhub"] or "error" in results["adapterhub"]:
        rows.append(["adapterhub", "", str(results["adapterhub"])[:60]])
    return format_table(["speed-up over the loop", "params/task", *(f"T={t}" for t in ts)], rows)


def plot(results: dict, ts: list[int], name: str, args: argparse.Namespace) -> None:
    def draw(ax):
        for side, style in (("ours", "-"), ("adapterhub", "--")):
            for layers in LAYERS:
                values = [speedup(results[side], layers, t) for t in ts]
                if all(v is not None for v in values):
                    who = "PAL" if side == "ours" else "AdapterHub"
                    ax.plot(ts, values, style, marker="o", label=f"{who} {layers}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tasks (T)")
        ax.set_ylabel("speed-up over a loop of per-task forwards")
        ax.set_title(f"MiniLM, batch {args.batch}x{args.length}, {args.device} {args.dtype}")
        ax.legend()

    path = save_plot(name, draw)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
