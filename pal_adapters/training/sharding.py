"""FSDP2 sharding of a multi-task model (``training.sharding: fsdp``), and its full weights for saving.

    units:  the input embedding table | each encoder layer | the root (the rest: position and
            type embeddings, pooler, every task's adapters and heads)

Each unit's parameters are sharded over the default process group (gloo on CPU, NCCL on GPU),
``torch.distributed.fsdp.fully_shard`` gathers a unit's parameters just before its forward and
reduce-scatters its gradients after its backward, so each process keeps ``1/world`` of the
parameters, gradients and optimizer state. The adapters and heads live in the root unit: PAL's
V^E/V^D serve every layer, so they cannot belong to one layer's unit, and a unit per task would
need its own gather, since the layers' hooks call adapters without their module's ``forward``.
Sharded with the root they cost ``1/world`` per process like the backbone (replicated they
would cost their full size on every process, for the same traffic: an all-reduce is a
reduce-scatter plus an all-gather); ``benchmarks/fsdp_memory.py`` measures both. FSDP2 allows
frozen and trainable parameters in one unit, so a frozen backbone with trained adapters needs
nothing more. Units must run on every process in the same order: ``Batcher(every_task=True)``
gives every process rows of every task of a batch (pytorch#158719: FSDP assumes SPMD).

Saving and loading see full, plain parameters: ``gathered`` (rank 0 holds them, for
``save_pretrained`` / ``save_task`` / checkpoints, which then write the bytes a one-process run
writes) and ``loading`` (every process, written back into its shards on exit). Both are
collectives: every process enters them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

Slot = tuple[nn.Module, str, DTensor]  # a module, the name of its sharded parameter, the parameter


def shard_model(model: nn.Module, mixed_precision: str | None = None) -> None:
    """``fully_shard`` the embedding table, each layer of ``model.bank`` and then ``model`` itself.
    ``mixed_precision="bf16"``: bf16 parameters in the forward and backward, fp32 reductions."""
    ensure_process_group()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if mixed_precision == "bf16" else MixedPrecisionPolicy())
    embeddings = model.backbone.get_input_embeddings()
    for unit in (embeddings, *dict.fromkeys(model.bank.resolved.modules)):  # a shared layer once
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def ensure_process_group() -> None:
    """A one-process group when none was started (one GPU, no launcher): FSDP needs a group."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def is_sharded(model: nn.Module) -> bool:
    return any(is_sharded_parameter(p) for p in model.parameters())


def is_sharded_parameter(p: torch.Tensor) -> bool:
    return isinstance(p, DTensor)


def _slots(model: nn.Module) -> list[Slot]:
    """The sharded parameters, every unit resharded first: the root stays gathered after a forward,
    and its state-dict hook would put its shards back over the full parameters swapped in."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return [(m, n, p) for m in model.modules() for n, p in m._parameters.items() if isinstance(p, DTensor)]


def _swap(slots: list[Slot], full: list[torch.Tensor]) -> None:
    for (module, name, p), value in zip(slots, full, strict=True):
        module._parameters[name] = nn.Parameter(value, requires_grad=p.requires_grad)


def _restore(slots: list[Slot]) -> None:
    for module, name, p in slots:
        module._parameters[name] = p


@contextmanager
def gathered(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside, the main process's ``model`` has full plain parameters (on the CPU) in place of its
    shards; the others keep theirs. Every process enters (one all-gather per parameter); no-op when
    ``enabled`` is false or nothing is sharded. Run no forward inside: FSDP would gather again."""
    slots = _slots(model) if enabled else []
    if not slots:
        yield
        return
    full = [p.detach().full_tensor().cpu() for _, _, p in slots]
    if dist.get_rank() != 0:
        del full
        yield
        return
    _swap(slots, full)
    try:
        yield
    finally:
        _restore(slots)


@contextmanager
def loading(model: nn.Module) -> Iterator[None]:
    """Inside, every process's ``model`` has full plain parameters; what is loaded into them is
    written into each process's shards on exit (all processes load the same values)."""
    slots = _slots(model)
    full = [p.detach().full_tensor().cpu() for _, _, p in slots]
    _swap(slots, full)
    try:
        yield
    finally:
        values = [module._parameters[name].detach() for module, name, _ in slots]
        _restore(slots)
        with torch.no_grad():
            for (_, _, p), value in zip(slots, values, strict=True):
                p.to_local().copy_(_shard_like(value, p).to_local())


def _shard_like(value: torch.Tensor, like: DTensor) -> DTensor:
    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered (to the CPU): the format, and
    for the same values the bytes, of a one-process optimizer. Every process calls it."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in s.items()}
                      for i, s in sorted(state["state"].items())}
    return state


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a one-process optimizer state into an optimizer of sharded parameters (each process
    keeps its shard of every moment)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, s in state["state"].items():
        p = params[int(index)]
        if isinstance(p, DTensor):
            for k, v in s.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0:
                    s[k] = _shard_like(v, p)
    optimizer.load_state_dict(state)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2) over sharded and plain gradients alike: the squares
    of the local shards are summed over processes in one all-reduce; plain gradients (replicated,
    already averaged) count once."""
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    local = torch.zeros((), dtype=torch.float64, device=device)
    plain = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        if isinstance(g, DTensor):
            local += g.to_local().double().pow(2).sum()
        else:
            plain += g.double().pow(2).sum()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(local)
    total = (local + plain).sqrt().float()
    coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    for g in grads:
        g.mul_(coef)
    return total
