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

from .inject import ATTRIBUTE

if TYPE_CHECKING:
    from .model import MultiTaskModel


def _check_mergeable(model: MultiTaskModel, name: str) -> None:
    model.check_task(name)
    kind = model.bank[name].config.kind
    if kind != "lhuc":
        raise ValueError(f"task {name!r} uses kind={kind!r}, which adds a function of the input and cannot be "
                         "merged into the backbone; only kind='lhuc' (LHUC alone) can")
    layout = model.bank.resolved.layout
    if layout.pre_ln or layout.shared:
        why = "its layers are pre-LN" if layout.pre_ln else "one layer module serves several depths"
        raise ValueError(f"cannot merge LHUC into {model.backbone.config.model_type!r}: {why}")


def merge_lhuc(model: MultiTaskModel, name: str) -> nn.Module:
    """Return a copy of the backbone, without adapters, computing what task ``name``'s adapted
    backbone computes. The model itself is left unchanged."""
    _check_mergeable(model, name)
    bank = model.bank
    bank.detach()  # hooks and the bank stay out of the copy
    delattr(model.backbone, ATTRIBUTE)
    try:
        merged = copy.deepcopy(model.backbone)
    finally:
        model.backbone.add_module(ATTRIBUTE, bank)
        bank.attach()
    layers = merged.get_submodule(bank.resolved.layout.layers)
    adapter = bank[name]
    with torch.no_grad():
        for depth in adapter.depths:
            norm = layers[depth].get_submodule(bank.resolved.layout.last_norm)
            scale = adapter.output_scale(depth).to(norm.weight.dtype)
            norm.weight.mul_(scale)
            if norm.bias is not None:
                norm.bias.mul_(scale)
    return merged
