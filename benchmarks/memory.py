"""Training memory and disk: frozen vs tuned backbone, gradient checkpointing, bytes per task; the CLI.

1. Peak training memory, one subprocess per configuration (so each peak is its own): a random
   encoder of MiniLM or BERT-base shape with PALs in all layers and one head, AdamW, a batch of
   ``--batch`` x ``--length``, a few forward+backward+step iterations. CPU: peak RSS (ru_maxrss)
   minus the RSS before the model was built (torch and transformers imported), so the figure is
   what the model and its training add; GPU: ``torch.cuda.max_memory_allocated``. Configurations:
   backbone tuned or frozen (only PALs and heads train), gradient checkpointing off or on.
   Target (issue 10): frozen <= 0.6x tuned.
2. Bytes on disk: one task saved with ``save_task`` (PAL + head, safetensors) vs a full copy of
   the encoder (``save_pretrained``), both shapes.
3. Growth (RSS over a run, ``--only-growth``) and the real trainer (``--only-trainer``) live in
   memory_growth.py, with the child-process harness (rss_mb, run_child) both studies use;
   this file parses the flags, runs the studies and writes the report.

    python benchmarks/memory.py --quick     # ~4 min on the 2-core CPU
    python benchmarks/memory.py             # ~10 min
    python benchmarks/memory.py --device cuda

Writes benchmarks/results/memory[...].json and memory_growth.png.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    SHAPES,
    add_device_args,
    format_table,
    pal_training_model,
    run_metadata,
    set_results_dir,
    write_json,
)
from memory_growth import (  # noqa: E402
    child_main,
    growth,
    plot_growth,
    render_growth,
    rss_mb,
    run_child,
    trainer_growth,
)

TARGET_FROZEN_OVER_TUNED = 0.6


def child_peak(spec: dict) -> dict:
    """Run in a subprocess: a few training steps, then report the peak memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    base = rss_mb()
    model = pal_training_model(SHAPES[spec["shape"]], spec["frozen"], spec["checkpointing"], device=device)
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


def peaks(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory per shape x tuned/frozen (x checkpointing off/on unless --smoke), one child each."""
    out: dict[str, Any] = {}
    for shape in args.shapes:
        for ckpt in (False,) if args.smoke else (False, True):
            for frozen in (False, True):
                name = f"{shape} {'frozen' if frozen else 'tuned'}{' +ckpt' if ckpt else ''}"
                print(f"peak memory: {name}", file=sys.stderr, flush=True)
                spec = {"shape": shape, "frozen": frozen, "checkpointing": ckpt, "device": args.device,
                        "batch": args.batch, "length": args.length, "steps": args.steps, "threads": args.threads}
                out[name] = run_child(child_peak, spec, in_process=args.smoke)
    return out


def disk(shapes: list[str]) -> dict[str, Any]:
    """Bytes of one saved task (PAL + head) vs a full ``save_pretrained`` copy, per shape."""
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
    """Peak, frozen/tuned, disk and growth tables as text."""
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
    lines.append(render_growth(report["growth"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, with --quick / --smoke presets applied and the default JSON name filled in."""
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the studies the flags select, print the tables, write the JSON (and the growth PNG)."""
    args = parse_args(argv)
    if args.only_growth:
        report = {**run_metadata(), "settings": {"batch": args.batch, "growth_steps": args.growth_steps},
                  "peak": {}, "frozen_over_tuned": {}, "disk": {}, "growth": growth(args)}
        print(render(report))
        print(f"wrote {write_json(args.output.replace('.json', '_growth.json'), report)}")
        plot_growth(report["growth"], args.output.replace(".json", "_growth.png"))
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
        plot_growth(report["growth"], args.output.replace(".json", "_growth.png"))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main([child_peak], sys.argv[2:])
    else:
        main()
