"""Undo on failure: a load that fails at any point, of any type, leaves what it was loading into as it was.

``saving.py`` checks everything before it changes anything; these guard the steps that change
things (attaching adapters, adding a task, copying weights) against what checks cannot rule out:
an interrupt, running out of memory, a bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from .inject import ATTRIBUTE, remove_adapters
from .io import backbone_state

if TYPE_CHECKING:
    from .model import MultiTaskModel


@contextmanager
def task_removed_on_failure(model: MultiTaskModel, name: str) -> Iterator[None]:
    """Any failure inside (KeyboardInterrupt too) removes task ``name`` if it was added, so the model is as
    before and a retry can add it. ``add_task`` itself is all or nothing: there is no half-added task."""
    try:
        yield
    except BaseException:
        if name in model.tasks:
            model.remove_task(name)
        raise


@contextmanager
def backbone_restored_on_failure(backbone: nn.Module, snapshot: bool) -> Iterator[None]:
    """Any failure inside (KeyboardInterrupt too): ``backbone`` gets back its modules and hooks, its
    ``requires_grad`` flags and, with ``snapshot``, its weights."""
    base = getattr(backbone, "base_model", backbone)
    had_adapters = hasattr(base, ATTRIBUTE)
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    weights = {k: v.detach().clone() for k, v in backbone_state(base).items()} if snapshot else None
    try:
        yield
    except BaseException:
        if not had_adapters and hasattr(base, ATTRIBUTE):
            remove_adapters(base)
        for n, p in backbone.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        if weights is not None:
            _put_back(base, weights)
        raise


def _put_back(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Restore a snapshot (its own code path: whatever failed in ``copy_into`` must not fail here too)."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name in weights:
                tensor.copy_(weights[name])
