"""Label checks the task kinds share: a loss raises on labels it cannot read, naming the bad value,
and returns an exact, graph-connected zero when every label is skipped (``IGNORE_INDEX``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100


def zero_loss(logits: Tensor) -> Tensor:
    """An exact 0 connected to ``logits``' graph: backward works and adds a zero gradient."""
    return logits.float().sum() * 0.0 + 0.0  # "+ 0.0" turns a -0.0 into 0.0


def require_tensor(labels: Any, kind: str) -> Tensor:
    """``labels`` if it is a tensor, else a ``TypeError`` naming its type."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{kind} labels must be a torch.Tensor, got {type(labels).__name__} "
                        f"(wrap them with torch.tensor(...))")
    return labels


def require_shape(labels: Tensor, shape: tuple[int, ...], kind: str, what: str) -> None:
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{kind} labels have shape {tuple(labels.shape)}; expected {tuple(shape)} ({what})")


def require_integer(labels: Tensor, kind: str) -> None:
    """Class ids must be an integer tensor: float ids would be silently truncated."""
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{kind} labels have dtype {labels.dtype}; expected integer class ids "
                        f"(torch.long), not {labels.dtype} (a float id would be truncated)")
