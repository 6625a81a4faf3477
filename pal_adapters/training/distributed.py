"""Gradient averaging across processes without DDP's unused-parameter problem.

A multi-task step trains one task (or a few, in mixed batches), so most per-task adapters and
heads get no gradient. ``DistributedDataParallel`` then either fails ("Expected to have finished
reduction in the prior iteration") or needs ``find_unused_parameters=True``, which walks the
autograd graph every step. We do not wrap the model: after the backward pass of an optimizer
step, ``all_reduce_gradients`` averages the gradients of all trainable parameters in one flat
all-reduce, with zeros standing in for missing gradients, and sets back to ``None`` the
gradients that no process produced, so the optimizer skips exactly the parameters a one-process
run would skip. The cost is one all-reduce of the trainable parameters per optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` of ``params`` over ``world_size`` processes (no-op for one process)."""
    if world_size == 1:
        return
    ref = params[0]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ref.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])
    dist.all_reduce(present)
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, count in zip(params, present.tolist(), strict=True):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone() if count > 0 else None
        offset += n


def any_process(flag: bool, world_size: int, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on any of ``world_size`` processes (one tiny all-reduce; no-op for one),
    so that all of them act on a signal only one of them received, at the same step."""
    if world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
