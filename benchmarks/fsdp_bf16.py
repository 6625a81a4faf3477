"""FSDP2 with bf16 parameters and fp32 reductions (``sharding: fsdp``, ``mixed_precision: bf16``)
against fp32, on 2 CPU processes (gloo): how far the trained weights move.

Runs ``tests/scripts/train_cases.py`` (the toy training cases of ``tests/test_fsdp.py``: 20 steps
each of one-task batches, mixed batches with grad_accum 2 and uncertainty weighting, a frozen
backbone, 2-row mixed batches, a resume at step 10; dropout 0) under ``torchrun --standalone`` three
times: 2 processes fp32, 2 processes bf16, 1 process bf16 (autocast only, unsharded). For every
case it reports the largest |w_bf16 - w_fp32| over the trainable weights and the median relative
difference per tensor. The bf16 parameters are FSDP's ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``: if they work, sharded bf16 is as far from fp32 as one process's bf16 autocast.

    python benchmarks/fsdp_bf16.py            # ~3 min on 2 cores

Writes benchmarks/results/fsdp_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "scripts"))
from common import format_table, run_metadata, set_results_dir, write_json  # noqa: E402

SCRIPT = ROOT / "tests" / "scripts" / "train_cases.py"
RUNS = {"fsdp_fp32": (2, "fsdp"), "fsdp_bf16": (2, "fsdp+bf16"), "one_bf16": (1, "none+bf16")}


def train(task_file: Path, out: Path, processes: int, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(SCRIPT), str(task_file), str(out), mode]
    subprocess.run(cmd, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)


def distance(a: dict, b: dict) -> dict[str, float]:
    return {"max_abs": max(float((a[k] - b[k]).abs().max()) for k in b),
            "median_relative": statistics.median(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=None, help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args()
    from helpers import write_toy_tasks
    from safetensors.torch import load_file
    from train_cases import CASES

    work = Path(tempfile.mkdtemp(prefix="fsdp_bf16-"))
    task_file = work / "tasks.json"
    task_file.write_text(json.dumps(write_toy_tasks(work / "data")))
    for name, (processes, mode) in RUNS.items():
        print(f"training {name}: {processes} process(es), {mode}", flush=True)
        (work / name).mkdir()
        train(task_file, work / name, processes, mode)
    weights = {n: {c: load_file(str(work / n / f"{c}.safetensors")) for c in CASES} for n in RUNS}
    rows = {c: {"fsdp_bf16_vs_fsdp_fp32": distance(weights["fsdp_bf16"][c], weights["fsdp_fp32"][c]),
                "one_bf16_vs_fsdp_fp32": distance(weights["one_bf16"][c], weights["fsdp_fp32"][c])} for c in CASES}
    print(format_table(["case", "sharded bf16: max |dw|", "median rel", "1-process bf16: max |dw|", "median rel"],
                       [[c, *(f"{r[k][m]:.4g}" for k in r for m in ("max_abs", "median_relative"))]
                        for c, r in rows.items()]))
    set_results_dir(args.results_dir)
    report = {**run_metadata(), "processes": 2, "backend": "gloo", "steps": 20,
              "runs": {n: list(r) for n, r in RUNS.items()}, "cases": rows,
              "reference": "fsdp_fp32 (equals one fp32 process to 1e-5: tests/test_fsdp.py)"}
    print(f"wrote {write_json('fsdp_bf16.json', report)}")


if __name__ == "__main__":
    main()
