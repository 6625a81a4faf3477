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

from .adapters.methods import methods
from .inject import ATTRIBUTE, AdapterBank

if TYPE_CHECKING:
    from .model import MultiTaskModel


def check_mergeable(bank: AdapterBank, name: str, model_type: str) -> None:
    """Raise, naming the reason, unless task ``name``'s adapters fold into the backbone's norms."""
    bank.check_task(name)
    config = bank[name].config
    if not config.method.mergeable:
        mergeable = sorted(n for n, m in methods().items() if m.mergeable)
        raise ValueError(f"task {name!r} uses kind={config.kind!r}, which adds a function of the input and cannot "
                         f"be merged into the backbone; only kind in {mergeable} (LHUC alone) can")
    layout = bank.resolved.layout
    if layout.pre_ln or layout.shared:
        why = "its layers are pre-LN" if layout.pre_ln else "one layer module serves several depths"
        raise ValueError(f"cannot merge LHUC into {model_type!r}: {why}")


def folded_norms(bank: AdapterBank, name: str, layers: nn.ModuleList,
                 safe_merge: bool = False) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]]:
    """The scaled ``(norm, γ·s, β·s)`` of each of ``layers`` that task ``name`` adapts, computed
    without changing anything (``γ, β, s``: ``(d_m,)``). ``safe_merge``: raise if any is not finite."""
    adapter = bank[name]
    folded = []
    with torch.no_grad():
        for depth in sorted(adapter.depths):
            norm = layers[depth].get_submodule(bank.resolved.layout.last_norm)
            scale = adapter.output_scale(depth).to(norm.weight.dtype)
            bias = None if norm.bias is None else norm.bias * scale
            folded.append((norm, norm.weight * scale, bias))
    if safe_merge:
        broken = [i for i, (_, w, b) in enumerate(folded)
                  if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all())]
        if broken:
            depths = [sorted(adapter.depths)[i] for i in broken]
            raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken: "
                             f"its LHUC scales at depths {depths} are not finite; nothing was merged")
    return folded


def write_norms(folded: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]]) -> None:
    """Copy what ``folded_norms`` computed into the norms, in place."""
    with torch.no_grad():
        for norm, weight, bias in folded:
            norm.weight.copy_(weight)
            if bias is not None:
                norm.bias.copy_(bias)


def fold_lhuc(bank: AdapterBank, name: str, layers: nn.ModuleList, safe_merge: bool = False) -> None:
    """Scale the last norm of each of ``layers`` that task ``name`` adapts by its LHUC scale, in place.
    Every scaled norm is computed (and, with ``safe_merge``, checked) before the first is written."""
    write_norms(folded_norms(bank, name, layers, safe_merge))


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
