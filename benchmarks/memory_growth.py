"""RSS over a training run, and the child-process harness both memory studies measure in.

Owns the growth studies of ``memory.py`` (``--only-growth``, ``--only-trainer``):

1. Growth: RSS every 10 steps over ``--growth-steps`` training steps of MiniLM whose batch length
   varies at random (16..128) vs a fixed length, under the system allocator and under the steady
   malloc of common.py, each in its own subprocess. Separates the allocator (freed blocks kept
   and fragmented) from real growth (tensors kept alive).
2. Trainer growth: the real ``MultiTaskTrainer`` on ../shared/data/glue for ``--trainer-steps``
   steps, RSS sampled every second.

and the harness ``memory.py``'s peak study shares: ``rss_mb`` and ``run_child``, which runs a
``child_*`` function in a fresh interpreter (``python <its file> --child <name> <spec>``) so each
peak and trace is that run's alone.

Run through ``python benchmarks/memory.py --only-growth`` / ``--only-trainer --trainer-steps N``;
this file runs on its own only as such a child.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import SHAPES, STEADY_MALLOC, format_table, pal_training_model, save_plot  # noqa: E402

Child = Callable[[dict], dict]


def rss_mb() -> float:
    """Current resident set size in MB (from /proc; psutil is not needed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(child: Child, spec: dict, malloc: str | None = None, in_process: bool = False) -> dict:
    """Run ``child(spec)`` in a fresh interpreter (its own peak RSS), or here (--smoke).

    The interpreter runs the file that defines ``child`` with ``--child <name> <spec>``; that
    file's ``__main__`` hands it to ``child_main``. ``malloc`` sets GLIBC_TUNABLES for it.
    """
    if in_process:
        return child(spec)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if malloc:
        env["GLIBC_TUNABLES"] = malloc
    script = str(Path(inspect.getfile(child)).resolve())
    proc = subprocess.run([sys.executable, script, "--child", child.__name__, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(children: list[Child], argv: list[str]) -> None:
    """Entry point of a child interpreter: ``argv`` is ``[name, spec_json]``; prints the result as JSON."""
    table = {c.__name__: c for c in children}
    if len(argv) != 2 or argv[0] not in table:
        raise SystemExit(f"usage: --child {{{','.join(sorted(table))}}} SPEC_JSON; got {argv}")
    print(json.dumps(table[argv[0]](json.loads(argv[1]))))


def child_growth(spec: dict) -> dict:
    """Run in a subprocess: ``steps`` training steps of MiniLM shape, RSS every 10 steps."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = pal_training_model(SHAPES[spec["shape"]], frozen=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rng = random.Random(0)
    trace = []
    for step in range(spec["steps"]):
        length = rng.randint(16, 128) if spec["varying"] else 128
        ids = torch.randint(5, 1000, (spec["batch"], length))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), task="task",
                    labels=torch.randint(0, 2, (spec["batch"],)))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == spec["steps"] - 1:
            trace.append([step, rss_mb()])
    return {"trace": trace, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_trainer(spec: dict) -> dict:
    """Run in a subprocess: the real trainer (GLUE tasks, tokenizer, datasets, dynamic padding,
    evaluation at the end) for ``steps`` steps; RSS sampled every second by a thread."""
    import threading
    import time

    import torch

    from pal_adapters.training.config import TrainConfig
    from pal_adapters.training.loop import MultiTaskTrainer
    from pal_adapters.training.taskdefs import load_task_defs

    torch.set_num_threads(spec["threads"])
    trace, stop, t0 = [], threading.Event(), time.perf_counter()

    def sample():
        while not stop.wait(1.0):
            trace.append([round(time.perf_counter() - t0, 1), rss_mb()])

    threading.Thread(target=sample, daemon=True).start()
    examples = Path(__file__).resolve().parents[1] / "examples"
    defs = load_task_defs(examples / "glue.yaml", data_dir=spec["data_dir"])
    defs = {n: defs[n] for n in ("sst2", "mrpc", "stsb", "rte")}
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(model="minilm", adapter="pal", max_steps=spec["steps"], batch_size=spec["batch"],
                             eval_every=spec["steps"], max_train_examples=spec["max_train"], max_eval_examples=500,
                             output_dir=tmp, lr=1e-4, adapter_lr=1e-3)
        built = rss_mb()
        trainer = MultiTaskTrainer(config, defs)
        after_init = rss_mb()
        trainer.fit()
    stop.set()
    return {"trace_seconds_mb": trace, "rss_before_trainer_mb": built, "rss_after_init_mb": after_init,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def growth(args: argparse.Namespace) -> dict[str, Any]:
    """RSS traces per allocator x batch-length setting (system/varying only under --smoke, in-process)."""
    out = {}
    for malloc_name, malloc in (("system", None), ("steady", STEADY_MALLOC))[:1 if args.smoke else 2]:
        for varying in (True,) if args.smoke else (True, False):
            name = f"{malloc_name} malloc, {'varying' if varying else 'fixed'} length"
            print(f"growth: {name}", file=sys.stderr, flush=True)
            spec = {"shape": "tiny" if args.smoke else "minilm", "steps": args.growth_steps, "varying": varying,
                    "batch": args.batch, "threads": args.threads}
            out[name] = run_child(child_growth, spec, malloc, in_process=args.smoke)
    return out


def trainer_growth(args: argparse.Namespace) -> dict[str, Any]:
    """The real trainer for ``--trainer-steps`` steps in a subprocess, or why it was skipped."""
    data_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    if not data_dir.is_dir():
        return {"skipped": f"no GLUE data at {data_dir}"}
    print(f"trainer growth: {args.trainer_steps} steps", file=sys.stderr, flush=True)
    spec = {"steps": args.trainer_steps, "batch": args.batch, "threads": args.threads, "max_train": 4000,
            "data_dir": str(data_dir)}
    return run_child(child_trainer, spec)


def render_growth(growth_runs: dict[str, Any]) -> str:
    """Table of RSS at step 0, mid-run and the end per growth run (errors shown in place)."""
    rows = []
    for name, g in growth_runs.items():
        if not isinstance(g, dict):
            continue
        if "trace" in g:
            t = g["trace"]
            mid = t[len(t) // 2][1]
            rows.append([name, f"{t[0][1]:.0f}", f"{mid:.0f}", f"{t[-1][1]:.0f}", f"{t[-1][1] - mid:+.0f}"])
        else:
            rows.append([name, g.get("error", "")[:50], "", "", ""])
    return format_table(["growth run", "RSS step 0", "mid-run", "end", "end - mid"], rows)


def plot_growth(growth_runs: dict[str, Any], name: str) -> None:
    """RSS against training step, one line per growth run, saved as ``name`` under the results dir."""
    def draw(ax):
        for label, g in growth_runs.items():
            if isinstance(g, dict) and "trace" in g:
                ax.plot([s for s, _ in g["trace"]], [m for _, m in g["trace"]], label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("RSS over a training run (MiniLM shape, PAL, AdamW)")
        ax.legend(fontsize=8)

    path = save_plot(name, draw)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main([child_growth, child_trainer], sys.argv[2:])
    else:
        raise SystemExit("memory_growth.py runs only as a child; use: python benchmarks/memory.py --only-growth")
