"""A short mixed-batch training run in fp32 and in bf16 from the same start: the loss must go down
in both, and the bf16 loss curve must follow the fp32 one.

MiniLM shape (random weights unless the packaged MiniLM is installed), PALs in all layers, 4
tasks whose labels are simple functions of the tokens (learnable in a few dozen steps), batches
of 32 x 64 with rows of all 4 tasks mixed (``task_ids=``), AdamW lr 1e-4 on everything
(backbone tuned, the paper's recipe; ``--freeze-backbone`` trains PALs and heads only). bf16 runs
under ``torch.autocast`` (weights and optimiser stay fp32).
Checks: last-10-step mean loss < 0.8 x first-10-step mean, in both; mean |bf16 - fp32| over the
smoothed curves <= ``--tolerance`` (default 0.05).

    python benchmarks/train_check.py --device cuda          # ~1 min on one H100
    python benchmarks/train_check.py --smoke                # tiny, CPU, seconds
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
    add_device_args,
    configure_device,
    format_table,
    minilm_backbone,
    run_metadata,
    save_plot,
    set_results_dir,
    write_json,
)

from pal_adapters import add_pal  # noqa: E402

TASKS = 4


def batches(steps: int, batch: int, length: int, vocab: int, device) -> list[dict[str, Any]]:
    """Fixed data: each row is mostly token 5 or token 6 (the rest random); the label is which,
    flipped for odd tasks, so every task is easy but the tasks disagree (their routing matters)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        key = torch.randint(5, 7, (batch, 1), generator=g)
        noise = torch.randint(7, vocab, (batch, length), generator=g)
        ids = torch.where(torch.rand(batch, length, generator=g) < 0.5, key, noise)
        task_ids = torch.arange(batch) % TASKS
        labels = ((key[:, 0] == 6).long() ^ (task_ids % 2)).long()
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "task_ids": task_ids.to(device), "labels": labels.to(device)})
    return out


def train(model, data: list[dict[str, Any]], dtype: torch.dtype | None, lr: float) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    device_type = next(model.parameters()).device.type
    losses = []
    model.train()
    for batch in data:
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def smooth(values: list[float], k: int = 5) -> list[float]:
    return [statistics.fmean(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--freeze-backbone", action="store_true", help="train only PALs and heads")
    add_device_args(p)
    args = p.parse_args(argv)
    set_results_dir(args.results_dir)
    if args.smoke:
        args.steps, args.batch, args.length, args.lr = 40, 16, 16, 1e-3
    device = configure_device(args.device, args.threads)
    backbone, described = minilm_backbone(args.smoke)
    data = batches(args.steps, args.batch, args.length, min(1000, backbone.config.vocab_size), device)
    curves = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)  # the same adapters and heads for both runs
        model = add_pal(copy.deepcopy(backbone), {f"task{i}": 2 for i in range(TASKS)}, adapter="pal",
                        freeze_backbone=args.freeze_backbone)
        curves[name] = train(model.to(device), data, dtype, args.lr)
    report = check(curves, args.tolerance)
    report.update({**run_metadata(), "backbone": described, "steps": args.steps, "batch": args.batch,
                   "length": args.length, "device": args.device, "curves": curves})
    rows = [[n, f"{report[n]['first10']:.3f}", f"{report[n]['last10']:.3f}",
             "yes" if report[n]["went_down"] else "NO"] for n in curves]
    print(format_table(["dtype", "loss first 10", "loss last 10", "went down"], rows))
    print(f"mean |bf16 - fp32| (smoothed): {report['mean_abs_diff']:.4f} (tolerance {args.tolerance}) "
          + ("ok" if report["matches"] else "MISMATCH"))
    name = f"train_check{'_smoke' if args.smoke else ''}_{args.device}"
    print(f"wrote {write_json(name + '.json', report)}")
    save_plot(name + ".png", lambda ax: (ax.plot(smooth(curves["fp32"]), label="fp32"),
                                         ax.plot(smooth(curves["bf16"]), "--", label="bf16 autocast"),
                                         ax.set_xlabel("step"), ax.set_ylabel("loss (5-step mean)"), ax.legend()))
    if not (report["fp32"]["went_down"] and report["bf16"]["went_down"] and report["matches"]):
        sys.exit(1)
    return report


def check(curves: dict[str, list[float]], tolerance: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, c in curves.items():
        first, last = statistics.fmean(c[:10]), statistics.fmean(c[-10:])
        out[name] = {"first10": first, "last10": last, "went_down": last < 0.8 * first}
    diff = statistics.fmean(abs(a - b) for a, b in zip(smooth(curves["fp32"]), smooth(curves["bf16"]), strict=True))
    out["mean_abs_diff"] = diff
    out["matches"] = diff <= tolerance
    return out


if __name__ == "__main__":
    main()
