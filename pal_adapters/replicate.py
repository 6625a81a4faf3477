"""Run the bottom of the encoder once and the rest once per task: batch replication at a layer.

``predict_all`` asks for every task's output on the same input. Below the lowest adapted depth
all tasks compute the same thing, so a pre-hook on that layer repeats the batch ``n`` times, and
the router's padding mask with it; the router's segments then give copy ``i`` to task ``i``.
Layers above it get the encoder's own (unrepeated) mask and other per-layer arguments, so every
layer from there on repeats what is still batch-shaped at the original size: the hidden states
once, the arguments the layout marks as batch-shaped (attention mask, ...) at every layer.
Cost: one bottom pass plus ``n`` top passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .inject import AdapterBank


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
    """Inside the block, a forward repeats its batch ``n`` times from layer ``depth`` on."""
    if n == 1:
        yield
        return
    modules = bank.resolved.modules
    layers = modules if bank.resolved.layout.shared else modules[depth:]  # ALBERT: from depth 0
    handles = [layer.register_forward_pre_hook(_Replicator(bank, layer, n, batch), with_kwargs=True, prepend=True)
               for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
