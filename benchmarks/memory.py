"""Training memory and disk: frozen vs tuned backbone, gradient checkpointing, bytes per task, growth.

1. Peak training memory, one subprocess per configuration (so each peak is its own): a random
   encoder of MiniLM or BERT-base shape with PALs in all layers and one head, AdamW, a batch of
   ``--batch`` x ``--length``, a few forward+backward+step iterations. CPU: peak RSS (ru_maxrss)
   minus the RSS before the model was built (torch and transformers imported), so the figure is
   what the model and its training add; GPU: ``torch.cuda.max_memory_allocated``. Configurations:
   backbone tuned or frozen (only PALs and heads train), gradient checkpointing off or on.
   Target (issue 10): frozen <= 0.6x tuned.
2. Bytes on disk: one task saved with ``save_task`` (PAL + head, safetensors) vs a full copy of
   the encoder (``save_pretrained``), both shapes.
3. Growth: RSS every 10 steps over ``--growth-steps`` training steps of MiniLM whose batch length
   varies at random (16..128) vs a fixed length, under the system allocator and under the steady
   malloc of common.py, each in its own subprocess. Separates the allocator (freed blocks kept
   and fragmented) from real growth (tensors kept alive).

    python benchmarks/memory.py --quick     # ~4 min on the 2-core CPU
    python benchmarks/memory.py             # ~10 min
    python benchmarks/memory.py --device cuda

Writes benchmarks/results/memory[...].json and memory_growth.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    MINILM_SHAPE,
    STEADY_MALLOC,
    TINY_SHAPE,
    add_device_args,
    format_table,
    run_metadata,
    save_plot,
    set_results_dir,
    write_json,
)

BERT_BASE_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SHAPES = {"minilm": MINILM_SHAPE, "bert-base": BERT_BASE_SHAPE, "tiny": TINY_SHAPE}
TARGET_FROZEN_OVER_TUNED = 0.6


def rss_mb() -> float:
    """Current resident set size in MB (from /proc; psutil is not needed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(shape: str, frozen: bool, checkpointing: bool, device: str):
    import torch
    from transformers import AutoConfig, AutoModel

    from pal_adapters import add_pal

    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model("bert", **SHAPES[shape]))
    if checkpointing:
        backbone.gradient_checkpointing_enable()
    model = add_pal(backbone, {"task": 2}, adapter="pal", freeze_backbone=frozen).to(device).train()
    return model


def child_peak(spec: dict) -> dict:
    """Run in a subprocess: a few training steps, then report the peak memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    base = rss_mb()
    model = build(spec["shape"], spec["frozen"], spec["checkpointing"], device)
    after_build = rss_mb()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (spec["batch"], spec["length"]), generator=g).to(device)
    labels = torch.randint(0, 2, (spec["batch"],), generator=g).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    adapters = [p for n, p in model.named_parameters() if "pal_adapters." in n]
    for _ in range(spec["steps"]):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), task="task", labels=labels)
        out.loss.backward()
        # Every PAL parameter is reached by backward (also under checkpointing, backbone frozen).
        adapter_grads_ok = all(p.grad is not None for p in adapters)  # V^D = 0 at init: others get zeros
        opt.step()
        opt.zero_grad(set_to_none=True)
    result = {"rss_before_model_mb": base, "rss_after_build_mb": after_build,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "trainable_params": sum(p.numel() for p in trainable),
              "total_params": sum(p.numel() for p in model.parameters()), "adapter_grads_ok": adapter_grads_ok}
    result["peak_added_mb"] = result["peak_rss_mb"] - base
    if device.startswith("cuda"):
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def child_growth(spec: dict) -> dict:
    """Run in a subprocess: ``steps`` training steps of MiniLM shape, RSS every 10 steps."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = build(spec["shape"], False, False, "cpu")
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


def run_child(kind: str, spec: dict, malloc: str | None = None, in_process: bool = False) -> dict:
    """Run ``child_peak``/``child_growth`` in a fresh interpreter (its own peak), or here (--smoke)."""
    children = {"peak": child_peak, "growth": child_growth, "trainer": child_trainer}
    if in_process:
        return children[kind](spec)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if malloc:
        env["GLIBC_TUNABLES"] = malloc
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peaks(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in args.shapes:
        for ckpt in (False,) if args.smoke else (False, True):
            for frozen in (False, True):
                name = f"{shape} {'frozen' if frozen else 'tuned'}{' +ckpt' if ckpt else ''}"
                print(f"peak memory: {name}", file=sys.stderr, flush=True)
                spec = {"shape": shape, "frozen": frozen, "checkpointing": ckpt, "device": args.device,
                        "batch": args.batch, "length": args.length, "steps": args.steps, "threads": args.threads}
                out[name] = run_child("peak", spec, in_process=args.smoke)
    return out


def disk(shapes: list[str]) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModel

    from pal_adapters import add_pal

    out = {}
    for shape in shapes:
        torch.manual_seed(0)
        backbone = AutoModel.from_config(AutoConfig.for_model("bert", **SHAPES[shape]))
        with tempfile.TemporaryDirectory() as tmp:
            backbone.save_pretrained(Path(tmp) / "full")
            full = sum(f.stat().st_size for f in (Path(tmp) / "full").rglob("*") if f.is_file())
            model = add_pal(backbone, {"task": 2}, adapter="pal")
            model.save_task(Path(tmp) / "task", "task")
            task = sum(f.stat().st_size for f in (Path(tmp) / "task").rglob("*") if f.is_file())
        out[shape] = {"full_copy_bytes": full, "task_bytes": task, "task_over_full": task / full}
    return out


def growth(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for malloc_name, malloc in (("system", None), ("steady", STEADY_MALLOC))[:1 if args.smoke else 2]:
        for varying in (True,) if args.smoke else (True, False):
            name = f"{malloc_name} malloc, {'varying' if varying else 'fixed'} length"
            print(f"growth: {name}", file=sys.stderr, flush=True)
            spec = {"shape": "tiny" if args.smoke else "minilm", "steps": args.growth_steps, "varying": varying,
                    "batch": args.batch, "threads": args.threads}
            out[name] = run_child("growth", spec, malloc, in_process=args.smoke)
    return out


def ratios(peak: dict[str, Any], device: str) -> dict[str, float]:
    """frozen / tuned of the memory a configuration adds, per shape and checkpointing setting."""
    key = "cuda_max_allocated_mb" if device.startswith("cuda") else "peak_added_mb"
    out = {}
    for name, row in peak.items():
        if " frozen" in name and key in row:
            tuned = peak.get(name.replace(" frozen", " tuned"), {})
            if key in tuned:
                out[name.replace(" frozen", "")] = row[key] / tuned[key]
    return out


def render(report: dict[str, Any]) -> str:
    lines = []
    rows = []
    for name, r in report["peak"].items():
        if "error" in r:
            rows.append([name, "error: " + r["error"][:60], "", "", "", ""])
            continue
        cuda = f"{r['cuda_max_allocated_mb']:.0f}" if "cuda_max_allocated_mb" in r else ""
        rows.append([name, f"{r['trainable_params'] / 1e6:.2f}M", f"{r['peak_rss_mb']:.0f}",
                     f"{r['peak_added_mb']:.0f}", cuda, "yes" if r["adapter_grads_ok"] else "NO"])
    lines.append(format_table(["configuration", "trainable", "peak RSS MB", "added MB", "CUDA max MB",
                               "PAL grads"], rows))
    for name, v in report["frozen_over_tuned"].items():
        ok = "ok" if v <= TARGET_FROZEN_OVER_TUNED else "MISSED"
        lines.append(f"frozen / tuned, {name}: {v:.2f}x (target <= {TARGET_FROZEN_OVER_TUNED}x {ok})")
    rows = [[s, f"{d['task_bytes'] / 2**20:.2f}", f"{d['full_copy_bytes'] / 2**20:.1f}", f"{d['task_over_full']:.4f}"]
            for s, d in report["disk"].items()]
    lines.append(format_table(["shape", "one task MB", "full copy MB", "ratio"], rows))
    rows = []
    for name, g in report["growth"].items():
        if not isinstance(g, dict):
            continue
        if "trace" in g:
            t = g["trace"]
            mid = t[len(t) // 2][1]
            rows.append([name, f"{t[0][1]:.0f}", f"{mid:.0f}", f"{t[-1][1]:.0f}", f"{t[-1][1] - mid:+.0f}"])
        else:
            rows.append([name, g.get("error", "")[:50], "", "", ""])
    lines.append(format_table(["growth run", "RSS step 0", "mid-run", "end", "end - mid"], rows))
    return "\n".join(lines)


def plot(report: dict[str, Any], name: str) -> None:
    def draw(ax):
        for label, g in report["growth"].items():
            if isinstance(g, dict) and "trace" in g:
                ax.plot([s for s, _ in g["trace"]], [m for _, m in g["trace"]], label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("RSS over a training run (MiniLM shape, PAL, AdamW)")
        ax.legend(fontsize=8)

    path = save_plot(name, draw)
    if path:
        print(f"wrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="training steps per peak-memory configuration")
    p.add_argument("--growth-steps", type=int, default=200)
    p.add_argument("--trainer-steps", type=int, default=0,
                   help="also run the real trainer on ../shared/data/glue for this many steps, RSS sampled (0: off)")
    p.add_argument("--only-trainer", action="store_true", help="run only the trainer growth study")
    p.add_argument("--only-growth", action="store_true", help="run only the RSS growth study")
    p.add_argument("--quick", action="store_true", help="batch 8, 2 steps, 60 growth steps")
    p.add_argument("--output", default=None, help="JSON name under benchmarks/results/")
    add_device_args(p)
    args = p.parse_args(argv)
    set_results_dir(args.results_dir)
    if args.quick:
        args.batch, args.steps, args.growth_steps = 8, 2, 60
    if args.smoke:
        args.shapes, args.batch, args.length, args.steps, args.growth_steps = ["tiny"], 2, 16, 1, 12
    if args.output is None:
        tag = "" if args.device == "cpu" else f"_{args.device}"
        args.output = f"memory{'_smoke' if args.smoke else '_quick' if args.quick else ''}{tag}.json"
    return args


def trainer_growth(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    if not data_dir.is_dir():
        return {"skipped": f"no GLUE data at {data_dir}"}
    print(f"trainer growth: {args.trainer_steps} steps", file=sys.stderr, flush=True)
    spec = {"steps": args.trainer_steps, "batch": args.batch, "threads": args.threads, "max_train": 4000,
            "data_dir": str(data_dir)}
    return run_child("trainer", spec)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.only_growth:
        report = {**run_metadata(), "settings": {"batch": args.batch, "growth_steps": args.growth_steps},
                  "peak": {}, "frozen_over_tuned": {}, "disk": {}, "growth": growth(args)}
        print(render(report))
        print(f"wrote {write_json(args.output.replace('.json', '_growth.json'), report)}")
        plot(report, args.output.replace(".json", "_growth.png"))
        return report
    if args.only_trainer:
        report = {**run_metadata(), "trainer_growth": trainer_growth(args)}
        print(f"wrote {write_json(args.output.replace('.json', '_trainer.json'), report)}")
        return report
    peak = peaks(args)
    report = {**run_metadata(), "settings": {"batch": args.batch, "length": args.length, "steps": args.steps,
                                             "device": args.device, "adapter": "pal (all layers), AdamW",
                                             "growth_steps": args.growth_steps},
              "peak": peak, "frozen_over_tuned": ratios(peak, args.device), "disk": disk(args.shapes),
              "growth": growth(args) if args.device == "cpu" and args.growth_steps else {"skipped": "CPU only"},
              "trainer_growth": trainer_growth(args) if args.trainer_steps else {"skipped": "--trainer-steps 0"}}
    print(render(report))
    print(f"wrote {write_json(args.output, report)}")
    if args.device == "cpu":
        plot(report, args.output.replace(".json", "_growth.png"))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[3])
        print(json.dumps({"peak": child_peak, "growth": child_growth, "trainer": child_trainer}[sys.argv[2]](spec)))
    else:
        main()
