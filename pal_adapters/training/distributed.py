"""Gradient averaging across processes: Accelerate's DDP (the default) or one flat all-reduce.

A multi-task step trains one task (or a few, in mixed batches), so most per-task adapters and
heads get no gradient. ``DistributedDataParallel`` then fails ("Expected to have finished
reduction in the prior iteration") unless ``find_unused_parameters=True``, which walks the
autograd graph from the outputs every step to mark the rest ready. ``data_parallel`` prepares the
model that way with Accelerate (``grad_sync: ddp``): its bucketed all-reduces overlap the
backward pass, and ``benchmarks/grad_sync.py`` measures it faster than the alternative. A
parameter no process used keeps ``grad=None``, one used by some processes gets the average with
zeros for the others: what a one-process run sees. Every process must run every micro-step's
backward (the reducer waits for all), so the trainer's batcher gives a process without rows of a
drawn task a stand-in row of weight 0; ``synced_if`` skips the all-reduce of all but the last
micro-batch of a step (``no_sync``: DDP keeps the parameters used in those micro-batches).

``grad_sync: flat`` leaves the model unwrapped: after the backward passes of an optimizer step
``all_reduce_gradients`` averages the gradients of all trainable parameters in one flat
all-reduce, with zeros standing in for missing gradients, and sets back to ``None`` the gradients
that no process produced. The trainer also uses it for what no engine holds (the loss weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig

# A step trains the drawn tasks only: the others' adapters and heads get no gradient, which DDP must expect.
UNUSED_TASKS = DistributedDataParallelKwargs(find_unused_parameters=True)


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for this machine. Without a GPU we ask for CPU explicitly: accelerate only
    sets up multi-process CPU training (gloo) under ``accelerate launch``/``torchrun`` when told."""
    has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    has_gpu = has_gpu or torch.backends.mps.is_available()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not has_gpu, kwargs_handlers=[UNUSED_TASKS])


def data_parallel(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` prepared by ``accelerator`` as DDP with ``find_unused_parameters`` (several
    processes), or ``model`` itself (one). The module keeps its parameters: save and evaluate it."""
    if accelerator.num_processes == 1:
        return model
    if accelerator.ddp_handler is None:  # an accelerator made without DDP options
        accelerator.ddp_handler = UNUSED_TASKS
    elif not accelerator.ddp_handler.find_unused_parameters:
        raise ValueError("the accelerator's DistributedDataParallelKwargs has find_unused_parameters=False, but a "
                         "multi-task step leaves the other tasks' parameters without gradients: pass "
                         "DistributedDataParallelKwargs(find_unused_parameters=True), or use grad_sync: flat")
    return accelerator.prepare(model)


def synced_if(last: bool, model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Around a micro-batch's forward and backward: DDP's ``no_sync`` unless it is the step's ``last``."""
    if last or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


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
