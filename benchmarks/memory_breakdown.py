"""Where training memory goes, tuned vs frozen backbone: exact byte counts, no RSS.

For each configuration (shape x backbone tuned/frozen x gradient checkpointing off/on x attention
dropout on/off) a random BERT encoder with PALs in every layer and one 2-class head runs one
forward + loss inside ``torch.autograd.graph.saved_tensors_hooks``. Every tensor autograd saves for
backward is recorded once per untyped storage (key: the storage's data_ptr, bytes: its nbytes) and
put in the first category it matches (B batch, T length, d hidden, I intermediate, d_s PAL width,
h_s PAL heads):

* ``attention TxT``: last two dims (T, T): attention probabilities, dropout masks and dropped
  probabilities of the backbone's and the PALs' attention;
* ``FFN intermediate``: last dim I;
* ``hidden``: last dim d, or B*T*d elements (q, k, v and contexts split into heads);
* ``PAL inner``: last dim d_s, d_s/h_s or 3*d_s, or B*T*d_s or B*T*3*d_s elements;
* ``weights``: a 2-D tensor of a parameter's shape or its transpose that is *not* a parameter's
  own storage (a copy);
* ``other``: the rest (ids, masks, logsumexp, pooled outputs, labels).

Storages that are parameters' own (a linear layer saving its weight) are new memory for nobody:
they are reported as ``aliased_param_bytes`` in the JSON and left out of the total.
Then params (all), grads (trainable params, same dtype), AdamW (2 x trainable fp32) and
total = params + grads + AdamW + saved activations (+ recompute peak, below).

Gradient checkpointing: in the forward only the checkpoint inputs are saved; during backward the
layer being recomputed holds its own activations, one layer at a time. That peak is added as
``recompute peak``: the saved bytes of the same configuration with ``num_hidden_layers=1`` and no
checkpointing (one layer plus embeddings and head: a slight over-estimate).

Attention dropout: on CPU, ``scaled_dot_product_attention`` with dropout_p > 0 takes the math path,
which keeps the T x T probabilities, the dropout mask and the dropped probabilities (3 x B*h*T*T
per layer); with dropout 0 (and on GPU with dropout) fused kernels keep only q, k, v, the output
and the logsumexp. "dropout off" sets attention_probs_dropout_prob=0 and the PAL dropout to 0.

    OMP_NUM_THREADS=1 python benchmarks/memory_breakdown.py            # minilm + bert-base, a few min
    python benchmarks/memory_breakdown.py --smoke                      # tiny, seconds

Writes benchmarks/results/memory_breakdown[_smoke].json and memory_breakdown[_smoke].png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    SHAPES,
    format_table,
    pal_training_model,
    run_metadata,
    save_plot,
    set_results_dir,
    write_json,
)

CATEGORIES = ["attention TxT", "FFN intermediate", "hidden", "PAL inner", "weights", "other"]
TARGET_FROZEN_OVER_TUNED = 0.6
MB = 1e6


def classify(t: Any, dims: dict[str, int], param_shapes: set[tuple[int, ...]]) -> str:
    """The category of one saved tensor (see the module docstring), from its shape alone."""
    b, n, d, inter, ds, hs = (dims[k] for k in ("B", "T", "d", "I", "d_s", "h_s"))
    shape, numel = tuple(t.shape), t.numel()
    if len(shape) >= 2 and shape[-2:] == (n, n):
        return "attention TxT"
    if shape and shape[-1] == inter:
        return "FFN intermediate"
    if (shape and shape[-1] == d) or numel == b * n * d:
        return "hidden"
    if (shape and shape[-1] in (ds, ds // hs, 3 * ds)) or numel in (b * n * ds, b * n * 3 * ds):
        return "PAL inner"
    if len(shape) == 2 and (shape in param_shapes or shape[::-1] in param_shapes):
        return "weights"
    return "other"


def saved_bytes(model: Any, dims: dict[str, int]) -> dict[str, int]:
    """Bytes autograd keeps for backward after one forward + loss, by category, each storage once."""
    import torch

    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    seen: set[int] = set()
    out = dict.fromkeys([*CATEGORIES, "aliased_param_bytes"], 0)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            kind = "aliased_param_bytes" if key in param_ptrs else classify(t, dims, param_shapes)
            out[kind] += storage.nbytes()
        return t

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (dims["B"], dims["T"]), generator=g)
    labels = torch.randint(0, 2, (dims["B"],), generator=g)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), task="task", labels=labels).loss
    del loss  # frees the graph and every saved tensor
    return out


def model_dims(model: Any, shape: dict[str, int], batch: int, length: int) -> dict[str, int]:
    """B, T, d, I of the run and the PAL width d_s (rows of V^E) and heads h_s of the model."""
    down = next(p for n, p in model.named_parameters() if n.endswith("ts.down.weight"))
    return {"B": batch, "T": length, "d": shape["hidden_size"], "I": shape["intermediate_size"],
            "d_s": down.shape[0], "h_s": model.adapter_config.num_heads}


def measure(shape: dict[str, int], frozen: bool, checkpointing: bool, dropout: bool,
            batch: int, length: int) -> dict[str, Any]:
    """One configuration's byte counts (params, grads, AdamW, saved activations, recompute peak)."""
    model = pal_training_model(shape, frozen, checkpointing, dropout)
    dims = model_dims(model, shape, batch, length)
    params = list(model.parameters())
    row: dict[str, Any] = {
        "dims": dims,
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "adamw": sum(2 * 4 * p.numel() for p in params if p.requires_grad),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }
    saved = saved_bytes(model, dims)
    row["aliased_param_bytes"] = saved.pop("aliased_param_bytes")
    row["saved"] = saved
    row["saved_total"] = sum(saved.values())
    del model
    row["recompute_peak"] = 0
    if checkpointing:
        one = pal_training_model({**shape, "num_hidden_layers": 1}, frozen, False, dropout)
        one_saved = saved_bytes(one, dims)
        row["recompute_peak"] = sum(v for k, v in one_saved.items() if k != "aliased_param_bytes")
    row["total"] = row["params"] + row["grads"] + row["adamw"] + row["saved_total"] + row["recompute_peak"]
    return row


def config_name(shape: str, frozen: bool, checkpointing: bool, dropout: bool) -> str:
    return f"{shape} {'frozen' if frozen else 'tuned'}{' +ckpt' if checkpointing else ''}" \
           f"{'' if dropout else ' drop0'}"


def ratios(rows: dict[str, dict[str, Any]], shapes: list[str]) -> dict[str, float]:
    """frozen total / tuned total per shape, checkpointing and dropout setting."""
    out = {}
    for shape in shapes:
        for dropout in (True, False):
            for ckpt in (False, True):
                tuned = rows[config_name(shape, False, ckpt, dropout)]["total"]
                frozen = rows[config_name(shape, True, ckpt, dropout)]["total"]
                out[f"{shape}{' +ckpt' if ckpt else ''}{'' if dropout else ' drop0'}"] = frozen / tuned
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per configuration, MB; "param views" are saved parameters, not in "saved" or the total."""
    header = ["config (MB)", *CATEGORIES, "recompute", "saved", "params", "grads", "AdamW", "total", "param views"]
    keys = ("recompute_peak", "saved_total", "params", "grads", "adamw", "total", "aliased_param_bytes")
    body = [[name, *(f"{r['saved'][c] / MB:.1f}" for c in CATEGORIES), *(f"{r[k] / MB:.1f}" for k in keys)]
            for name, r in rows.items()]
    return format_table(header, body)


def plot(rows: dict[str, dict[str, Any]], path: str) -> None:
    """Stacked bars, one per configuration: params, grads, AdamW, then each activation category."""
    stacks = {"params": lambda r: r["params"], "grads": lambda r: r["grads"], "AdamW": lambda r: r["adamw"],
              **{c: (lambda r, c=c: r["saved"][c]) for c in CATEGORIES},
              "recompute peak": lambda r: r["recompute_peak"]}

    def draw(ax: Any) -> None:
        names = list(rows)
        bottom = [0.0] * len(names)
        for label, get in stacks.items():
            values = [get(rows[n]) / MB for n in names]
            ax.bar(range(len(names)), values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylim(0, max(bottom) * 1.05)  # the tallest stack whole, not clipped at its top
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("MB (one forward+loss, exact bytes)")
        ax.set_title("Training memory by part: tuned vs frozen backbone", fontsize=9)
        ax.legend(fontsize=6, ncol=2)

    save_plot(path, draw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"], choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny shape, batch 2, length 16")
    parser.add_argument("--output", default=None, help="JSON name under benchmarks/results/")
    parser.add_argument("--results-dir", default=None, help="write JSON/PNG here instead of benchmarks/results/")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    set_results_dir(args.results_dir)
    if args.smoke:
        args.shapes, args.batch, args.length = ["tiny"], 2, 16
    output = args.output or f"memory_breakdown{'_smoke' if args.smoke else ''}.json"
    rows: dict[str, dict[str, Any]] = {}
    for shape in args.shapes:
        for dropout in (True, False):
            for ckpt in (False, True):
                for frozen in (False, True):
                    name = config_name(shape, frozen, ckpt, dropout)
                    print(f"measuring {name}", file=sys.stderr, flush=True)
                    rows[name] = measure(SHAPES[shape], frozen, ckpt, dropout, args.batch, args.length)
    frozen_over_tuned = ratios(rows, args.shapes)
    print(table(rows))
    print(f"\nfrozen / tuned total (target <= {TARGET_FROZEN_OVER_TUNED}):")
    for name, ratio in frozen_over_tuned.items():
        print(f"  {name}: {ratio:.3f}")
    report = {**run_metadata(), "batch": args.batch, "length": args.length, "units": "bytes",
              "shapes": {s: SHAPES[s] for s in args.shapes}, "categories": CATEGORIES, "rows": rows,
              "frozen_over_tuned": frozen_over_tuned, "target_frozen_over_tuned": TARGET_FROZEN_OVER_TUNED}
    print(f"wrote {write_json(output, report)}")
    plot(rows, Path(output).with_suffix(".png").name)


if __name__ == "__main__":
    main()
