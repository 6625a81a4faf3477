"""Run the shared part of the encoder once and the rest once per task: batch replication.

``predict_all`` asks for every task's output on the same input. Below the lowest adapted depth
all tasks compute the same thing, and so does the first adapted layer up to its last residual
sum: parallel adapters read the layer input, serial and LHUC ones act after it. So the batch is
repeated ``n`` times inside that layer (the router's ``Replication`` plan, applied by the layer's
site just before its last norm, or to the output of a pre-LN layer), and the router's segments
give copy ``i`` to task ``i``. Layers above get the encoder's own, unrepeated, mask and other
per-layer arguments, so a pre-hook on each repeats the arguments the layout marks as
batch-shaped. Encoders that apply one layer module at every depth (ALBERT) repeat at the input of
the first layer instead. Cost with PALs in the top half of L layers: L/2 + 1 shared layers, then
L/2 - 1 layers per task.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .inject import AdapterBank
from .routing import Replication


def _repeat(value: Any, n: int, batch: int) -> Any:
    """Repeat batch-shaped tensors (first dim == ``batch``) ``n`` times along dim 0."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat(n, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_repeat(v, n, batch) for v in value)
    return value


class _Replicator:
    def __init__(self, bank: AdapterBank, layer: torch.nn.Module, n: int, batch: int):
        self.bank, self.n, self.batch = bank, n, batch
        self.signature = inspect.signature(layer.forward)
        self.batch_args = set(bank.resolved.layout.batch_args)

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        bound = self.signature.bind(*args, **kwargs)
        first = next(iter(self.signature.parameters))
        for name, param in self.signature.parameters.items():
            if name not in bound.arguments:
                continue
            value = bound.arguments[name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._maybe(k, v) for k, v in value.items()}
            elif name == first:  # hidden states: repeated once, at the first replicated layer
                bound.arguments[name] = _repeat(value, self.n, self.batch)
            else:
                bound.arguments[name] = self._maybe(name, value)
        router = self.bank.router
        if router.keep is not None:
            router.keep = _repeat(router.keep, self.n, self.batch)
        return bound.args, bound.kwargs

    def _maybe(self, name: str, value: Any) -> Any:
        return _repeat(value, self.n, self.batch) if name in self.batch_args else value


@contextmanager
def replicated_from(bank: AdapterBank, depth: int, n: int, batch: int) -> Iterator[None]:
    """Inside the block, a forward repeats its batch ``n`` times in layer ``depth``."""
    if n == 1:
        yield
        return
    modules, router = bank.resolved.modules, bank.router
    shared = bank.resolved.layout.shared
    later = modules if shared else modules[depth + 1:]  # ALBERT: repeat at the first call instead
    handles = [layer.register_forward_pre_hook(_Replicator(bank, layer, n, batch), with_kwargs=True, prepend=True)
               for layer in later]
    router.replication = None if shared else Replication(depth, n, batch)
    try:
        yield
    finally:
        router.replication = None
        for handle in handles:
            handle.remove()
