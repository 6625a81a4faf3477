"""Fold LHUC scales into the backbone for zero-overhead single-task deployment.

LHUC alone scales a layer's output: ``LN(x)·s = (γ ⊙ x̂ + β) ⊙ s``, so ``γ' = γ·s`` and
``β' = β·s`` give the same output with no adapter at all. That holds for post-LN layers that
each serve one depth. PAL, low-rank and PAL-FFN add a non-linear function of the input and
cannot be folded; pre-LN layers (the output is a residual sum, not a norm) and ALBERT's shared
layer (one module, a different scale per depth) cannot be folded either.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .inject import ATTRIBUTE, AdapterBank

if TYPE_CHECKING:
    from .model import MultiTaskModel


def check_mergeable(bank: AdapterBank, name: str, model_type: str) -> None:
    """Raise, naming the reason, unless task ``name``'s adapters fold into the backbone's norms."""
    bank.check_task(name)
    kind = bank[name].config.kind
    if kind != "lhuc":
        raise ValueError(f"task {name!r} uses kind={kind!r}, which adds a function of the input and cannot be "
                         "merged into the backbone; only kind='lhuc' (LHUC alone) can")
    layout = bank.resolved.layout
    if layout.pre_ln or layout.shared:
        why = "its layers are pre-LN" if layout.pre_ln else "one layer module serves several depths"
        raise ValueError(f"cannot merge LHUC into {model_type!r}: {why}")


def fold_lhuc(bank: AdapterBank, name: str, layers: nn.ModuleList) -> None:
    """Scale the last norm of each of ``layers`` that task ``name`` adapts by its LHUC scale, in place."""
    adapter = bank[name]
    with torch.no_grad():
        for depth in adapter.depths:
            norm = layers[depth].get_submodule(bank.resolved.layout.last_norm)
            scale = adapter.output_scale(depth).to(norm.weight.dtype)
            norm.weight.mul_(scale)
            if norm.bias is not None:
                norm.bias.mul_(scale)


def merge_lhuc(model: MultiTaskModel, name: str) -> nn.Module:
    """Return a copy of the backbone, without adapters, computing what task ``name``'s adapted
    backbone computes. The model itself is left unchanged."""
    model.check_task(name)
    check_mergeable(model.bank, name, model.backbone.config.model_type)
    bank = model.bank
    bank.detach()  # hooks and the bank stay out of the copy
    delattr(model.backbone, ATTRIBUTE)
    try:
        merged = copy.deepcopy(model.backbone)
    finally:
        model.backbone.add_module(ATTRIBUTE, bank)
        bank.attach()
    fold_lhuc(bank, name, merged.get_submodule(bank.resolved.layout.layers))
    return merged
