"""ONNX Runtime against PyTorch eager on this CPU: one task's graph and the all-tasks graph.

The packaged MiniLM (all-MiniLM-L6-v2: 6 layers, d_m 384) with four tasks of four kinds
(classification, regression, token classification, extractive QA), PALs in the top half (the
layers below the first adapted one run once for all tasks), adapters and heads away from their
identity initialisation. Both graphs are exported with ``pal_adapters.export`` (torchscript
exporter, opset 17) and run in ONNX Runtime's CPU provider with as many intra-op threads as
torch has (``--threads``, 1 by default: the stable choice on a shared 2-core machine).

Four comparisons, batch x length in {1 x 64, 32 x 128} for one task (``model(task=)`` against the
one-task graph) and all tasks (``predict_all`` against the all-tasks graph). Each ONNX Runtime
call is timed back to back with its PyTorch call, in a shuffled order per round (common.py); the
figure is the median over rounds of the per-round ratio ONNX Runtime / PyTorch (below 1: ONNX
Runtime is faster). The JSON also holds each graph's file size, the export time and the largest
difference between the two backends' logits.

    python benchmarks/export.py --quick    # 3 rounds: ~2-3 minutes on the shared 2-core machine
    python benchmarks/export.py            # 10 rounds
    python benchmarks/export.py --smoke    # tiny random BERT, 1 round: checks the script runs

Like the other benchmarks it re-runs itself under ``STEADY_MALLOC`` (common.py), which keeps
freed memory and halves PyTorch eager's time at 32 x 128 on this machine (glibc's default
returns every large activation to the system, and PyTorch page-faults it back on the next
forward); ONNX Runtime has its own arena either way. ``--system-malloc`` measures the default
allocator a user gets, into ``export[_quick]_system_malloc.json``.

Writes benchmarks/results/export[_quick|_smoke][_system_malloc].json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    format_table,
    minilm_backbone,
    padded_inputs,
    pair_ratios,
    paired_timings,
    randomize_,
    run_metadata,
    set_clock,
    set_results_dir,
    steady_malloc_reexec,
    summary,
    write_json,
)

steady_malloc_reexec("--system-malloc" in sys.argv)  # before torch is imported, so it is imported once

import torch  # noqa: E402

from pal_adapters import AdapterConfig, add_pal  # noqa: E402
from pal_adapters.export import OnnxRunner, export_all_tasks, export_task  # noqa: E402

TASKS = {
    "sentiment": {"type": "classification", "num_labels": 2},
    "similarity": {"type": "regression"},
    "ner": {"type": "token_classification", "num_labels": 9},
    "qa": {"type": "extractive_qa"},
}
ONE_TASK = "sentiment"
SHAPES = {"full": [(1, 64), (32, 128)], "smoke": [(1, 8), (2, 16)]}


def build(smoke: bool) -> tuple[Any, str]:
    """MiniLM (or a tiny BERT) with the four tasks' PALs in the top half, non-identity weights."""
    backbone, description = minilm_backbone(smoke)
    model = add_pal(backbone, TASKS, adapter=AdapterConfig(kind="pal", layers="top_half")).eval()
    randomize_(model, "pal_adapters.", std=0.02)  # up-projections are zero at init
    randomize_(model, "heads.", std=0.5, seed=1)
    return model, description


def export_graphs(model, folder: Path) -> dict[str, dict[str, Any]]:
    """The one-task and all-tasks graphs in ``folder``: path, size and export seconds of each."""
    graphs = {}
    for name, write in (("one_task", lambda p: export_task(model, ONE_TASK, p)),
                        ("all_tasks", lambda p: export_all_tasks(model, p))):
        path = folder / f"{name}.onnx"
        start = time.perf_counter()
        write(path)
        graphs[name] = {"path": path, "export_s": time.perf_counter() - start, "mb": path.stat().st_size / 1e6}
    return graphs


def compare(model, runner: OnnxRunner, tasks: list[str], batch: int, length: int, rounds: int,
            vocab: int) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch eager on one (batch, length): seconds, ratio, largest logit gap."""
    x = padded_inputs(batch, length, vocab=vocab)

    def eager():
        return model(**x, task=tasks[0]).logits if len(tasks) == 1 else model.predict_all(tasks, **x)

    def onnx():
        return runner.task_logits(tasks, x)

    want, got = eager(), onnx()
    want = {tasks[0]: want} if len(tasks) == 1 else want
    gap = max((got[t] - want[t]).abs().max().item() for t in tasks)
    pairs = paired_timings((eager, None), {"onnx": (onnx, None)}, rounds, progress=False)["onnx"]
    return {"pytorch_s": summary(pairs["reference"]), "onnxruntime_s": summary(pairs["case"]),
            "ratio": summary(pair_ratios(pairs)), "max_abs_logit_diff": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT, short inputs, 1 round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or this process's CPU time (robust on a busy shared machine)")
    parser.add_argument("--system-malloc", action="store_true", help="do not re-run under STEADY_MALLOC")
    parser.add_argument("--results-dir", default=None, help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args()
    set_results_dir(args.results_dir)
    set_clock(args.clock)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    rounds = 1 if args.smoke else 3 if args.quick else args.rounds
    model, description = build(args.smoke)
    vocab = min(int(model.config.vocab_size), 1000)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        graphs = export_graphs(model, Path(folder))
        for name, tasks in (("one_task", [ONE_TASK]), ("all_tasks", list(TASKS))):
            runner = OnnxRunner(graphs[name]["path"], threads=args.threads)
            for batch, length in SHAPES["smoke" if args.smoke else "full"]:
                print(f"{name}, {batch} x {length} ...", file=sys.stderr, flush=True)
                results[f"{name} {batch}x{length}"] = compare(model, runner, tasks, batch, length, rounds, vocab)
            del runner
    files = {n: {"mb": round(g["mb"], 2), "export_s": round(g["export_s"], 2)} for n, g in graphs.items()}
    backbone_mb = sum(p.numel() * p.element_size() for n, p in model.backbone.named_parameters()
                      if "pal_adapters." not in n) / 1e6  # the adapters are injected under the backbone
    print_table(results, files, backbone_mb)
    stem = "export_smoke" if args.smoke else "export_quick" if args.quick else "export"
    stem += "_system_malloc" if args.system_malloc else ""
    path = write_json(f"{stem}.json", {**run_metadata(), "model": description, "tasks": TASKS,
                                       "adapter": "pal, top_half", "threads": args.threads, "clock": args.clock,
                                       "malloc": os.environ.get("GLIBC_TUNABLES", "system"), "rounds": rounds,
                                       "files": files, "backbone_fp32_mb": round(backbone_mb, 2),
                                       "results": results})
    print(f"wrote {path}")


def print_table(results: dict[str, Any], files: dict[str, Any], backbone_mb: float) -> None:
    rows = [[case, f"{r['pytorch_s']['median'] * 1e3:.1f}", f"{r['onnxruntime_s']['median'] * 1e3:.1f}",
             f"{r['ratio']['median']:.2f}x ({r['ratio']['q1']:.2f}-{r['ratio']['q3']:.2f})",
             f"{r['max_abs_logit_diff']:.1e}"] for case, r in results.items()]
    print(format_table(["graph, batch x length", "PyTorch ms", "ONNX Runtime ms", "ORT / PyTorch (q1-q3)",
                        "max |logit diff|"], rows))
    print(f"graph files: one task {files['one_task']['mb']:.1f} MB, all tasks {files['all_tasks']['mb']:.1f} MB "
          f"(the bare backbone's fp32 weights, pooler included: {backbone_mb:.1f} MB)")


if __name__ == "__main__":
    main()
