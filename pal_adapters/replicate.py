"""Run the shared part of the encoder once and the rest once per task: batch replication.

``predict_all`` asks for every task's output on the same input. Below the lowest adapted depth
all tasks compute the same thing, and so does the first adapted layer up to its last residual
sum: parallel adapters read the layer input, serial and LHUC ones act after it. So the batch is
repeated ``n`` times inside that layer (the call's ``Replication`` plan, applied by the layer's
site just before its last norm, or to the output of a pre-LN layer), and the call's segments
give copy ``i`` to task ``i``. Layers above get the encoder's own, unrepeated, mask and other
per-layer arguments, so each site's layer pre-hook repeats the arguments the layout marks as
batch-shaped. Encoders that apply one layer module at every depth (ALBERT) repeat at the input of
the first adapted depth instead. When every task acts on top of the encoder (``placement="top"``)
the batch is repeated at the output of the last layer: the whole encoder runs once. Cost with
PALs in the top half of L layers: L/2 + 1 shared layers, then L/2 - 1 layers per task.

The plan travels in the call's ``Routing`` (routing.py), so a ``predict_all`` changes nothing
that another call, in another thread, could see.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch


@dataclass(frozen=True)
class Replication:
    """``predict_all``'s plan: inside layer ``depth`` (at its output when ``after_layer``: every
    task acts on top of the encoder), repeat the batch of ``batch`` rows ``n`` times."""

    depth: int
    n: int
    batch: int
    after_layer: bool = False

    def repeat(self, value: Any) -> Any:
        """The one replication rule: a tensor whose first dim is ``batch`` is repeated ``n`` times
        along dim 0 (``(batch, ...) -> (n·batch, ...)``), a tuple item by item; anything else (None,
        scalars, tensors already repeated or not batch-shaped) is returned as it is."""
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != self.batch:
                return value
            return value.repeat(self.n, *([1] * (value.dim() - 1)))
        if isinstance(value, tuple):
            return tuple(self.repeat(v) for v in value)
        return value


def replication_plan(depth: int, n: int, batch: int, after_layer: bool = False) -> Replication | None:
    """Repeat a batch of ``batch`` rows ``n`` times from layer ``depth``; None when ``n`` is 1."""
    return None if n == 1 else Replication(depth, n, batch, after_layer)


@cache
def forward_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.forward`` without ``self``: kept per class, not on the hook objects,
    which must stay copyable (``copy.deepcopy`` and pickle refuse a Signature)."""
    signature = inspect.signature(cls.forward)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


class LayerArgs:
    """Repeats the batch-shaped arguments of one layer module's calls for a replication plan."""

    def __init__(self, layer: torch.nn.Module, batch_args: tuple[str, ...]):
        self.layer_class = type(layer)
        self.batch_args = set(batch_args)

    def repeat(self, plan: Replication, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The hidden states (first argument) and the ``batch_args`` repeated ``plan.n`` times."""
        signature = forward_signature(self.layer_class)
        first = next(iter(signature.parameters))
        bound = signature.bind(*args, **kwargs)
        for name, param in signature.parameters.items():
            if name not in bound.arguments:
                continue
            value = bound.arguments[name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._maybe(plan, k, v) for k, v in value.items()}
            elif name == first:  # hidden states: only the first replicated layer sees `batch` rows
                bound.arguments[name] = plan.repeat(value)
            else:
                bound.arguments[name] = self._maybe(plan, name, value)
        return bound.args, bound.kwargs

    def _maybe(self, plan: Replication, name: str, value: Any) -> Any:
        return plan.repeat(value) if name in self.batch_args else value
