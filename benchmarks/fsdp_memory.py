"""Per-process training memory under FSDP2 at 2 processes vs replicated, by exact bytes.

Each of 2 CPU processes (gloo) builds the same random MiniLM-shaped BERT (6 layers, d_m 384) with
PALs in every layer for ``--tasks`` 2-class tasks, tuned backbone, and runs one AdamW training step
on a small mixed batch (every task's rows on every process). Then it counts, as
``memory_breakdown.py`` does (elements x element size, no RSS): its parameters, its gradients and
its optimizer state (AdamW moments and steps). Placements:

* ``replicated``: no sharding (what the flat all-reduce of ``distributed.py`` trains);
* ``fsdp``: ``training.sharding: fsdp`` (``sharding.shard_model``: embedding table, each layer,
  root with the adapters and heads), everything sharded;
* ``fsdp_adapters_replicated``: the same units, adapters and heads left out of FSDP
  (``ignored_params``) and kept whole on every process.

Sharded bytes are the local shards (FSDP2 pads each parameter to a multiple of the processes: at
most one row per parameter, counted in ``padded_params``). ``gathered_peak`` is what a unit adds
while gathered: the largest other unit's full parameters (the embedding table, for MiniLM) plus
the root's, which stay gathered for the whole step.

    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py            # launches 2 processes, ~1 min
    python benchmarks/fsdp_memory.py --smoke                      # tiny shape

Writes benchmarks/results/fsdp_memory[_smoke].json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MINILM_SHAPE,
    TINY_SHAPE,
    format_table,
    padded_inputs,
    run_metadata,
    run_on_processes,
    set_results_dir,
    write_json,
)

TARGET = 0.55  # fsdp / replicated, params + grads + optimizer per process (issue 18)
MODES = ("replicated", "fsdp", "fsdp_adapters_replicated")


def build(shape: dict[str, int], tasks: int) -> Any:
    import torch
    from transformers import AutoConfig, AutoModel

    from pal_adapters import add_pal

    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model("bert", **shape))
    return add_pal(backbone, {f"task{i}": 2 for i in range(tasks)}, adapter="pal", freeze_backbone=False).train()


def shard(model: Any, mode: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from pal_adapters.training.sharding import shard_model

    if mode == "fsdp":
        shard_model(model)
    elif mode == "fsdp_adapters_replicated":
        own = {p for n, p in model.named_parameters() if "pal_adapters." in n or n.startswith("heads.")}
        for unit in (model.backbone.get_input_embeddings(), *model.bank.resolved.modules):
            fully_shard(unit)
        fully_shard(model, ignored_params=own)


def local_bytes(t: Any) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def measure(shape: dict[str, int], tasks: int, mode: str, batch: int, length: int) -> dict[str, int]:
    import torch

    from pal_adapters.training.distributed import all_reduce_gradients

    model = build(shape, tasks)
    units = (model.backbone.get_input_embeddings(), *model.bank.resolved.modules)
    full_unit = max(sum(local_bytes(p) for p in m.parameters()) for m in units)
    full_root = sum(local_bytes(p) for n, p in model.named_parameters() if ".encoder.layer." not in n
                    and "word_embeddings" not in n)
    shard(model, mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = padded_inputs(batch, length, vocab=shape.get("vocab_size", 30522))
    ids = [f"task{i % tasks}" for i in range(batch)]
    out = model(**inputs, task_ids=ids, labels={t: torch.zeros(ids.count(t), dtype=torch.long) for t in set(ids)})
    out.loss.backward()
    if mode != "fsdp":
        plain = [p for p in model.parameters() if not hasattr(p, "device_mesh")]
        all_reduce_gradients(plain, torch.distributed.get_world_size())
    optimizer.step()
    params = sum(local_bytes(p) for p in model.parameters())
    padded = sum(p._local_tensor.untyped_storage().nbytes() for p in model.parameters()
                 if hasattr(p, "_local_tensor"))
    grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return {"params": params, "grads": grads, "optimizer": state, "total": params + grads + state,
            "padded_params": padded, "gathered_peak": 0 if mode == "replicated" else full_unit + full_root}


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    shape = TINY_SHAPE if args.smoke else MINILM_SHAPE
    rows = {mode: measure(shape, args.tasks, mode, args.batch, args.length) for mode in MODES}
    if dist.get_rank() != 0:
        dist.destroy_process_group()
        return
    ratios = {m: rows[m]["total"] / rows["replicated"]["total"] for m in MODES}
    print(format_table(["placement", "params", "grads", "optimizer", "total", "x replicated"],
                       [[m, *(f"{rows[m][k] / 2**20:.2f} MiB" for k in ("params", "grads", "optimizer", "total")),
                         f"{ratios[m]:.3f}"] for m in MODES]))
    report = {**run_metadata(args.argv), "processes": dist.get_world_size(), "backend": "gloo",
              "shape": shape, "tasks": args.tasks, "adapter": "pal", "backbone": "tuned",
              "batch": args.batch, "length": args.length, "units": "bytes per process", "rows": rows,
              "over_replicated": ratios, "target_fsdp_over_replicated": TARGET}
    set_results_dir(args.results_dir)
    name = "fsdp_memory_smoke.json" if args.smoke else "fsdp_memory.json"
    print(f"wrote {write_json(name, report)}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--results-dir", default=None, help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args()
    run_on_processes(__file__, worker, args)


if __name__ == "__main__":
    main()
