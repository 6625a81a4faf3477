"""Learning Hidden Unit Contributions: a per-depth vector θ, applied as ``x · 2·sigmoid(θ)``."""

from __future__ import annotations

import torch
from torch import nn


class LHUC(nn.Module):
    """θ ∈ R^{d_m} per adapted depth, initialised to 0 so the scale starts at exactly 1.

    Outside training (eval mode and no autograd), ``2·sigmoid(θ)`` is computed once per depth and
    cached: it saves two ops per adapted layer per forward. The cache is keyed by θ's identity,
    version counter (bumped by every in-place update: optimiser steps, ``copy_``, loading),
    device and dtype, and is dropped on ``train()``, so it can never serve a stale value.
    """

    def __init__(self, d_model: int, depths: tuple[int, ...]):
        super().__init__()
        self.theta = nn.ParameterDict({str(d): nn.Parameter(torch.zeros(d_model)) for d in depths})
        self._cache: dict[tuple[str, torch.device], tuple[tuple, torch.Tensor]] = {}

    def train(self, mode: bool = True) -> LHUC:
        self._cache.clear()
        return super().train(mode)

    def scale(self, depth: int) -> torch.Tensor:
        """``(d_m,)`` multiplier ``2·sigmoid(θ_depth)``; it broadcasts over ``(B, T, d_m)``."""
        theta = self.theta[str(depth)]
        if self.training or torch.is_grad_enabled() or theta.is_inference():  # inference tensors have no version
            return 2.0 * torch.sigmoid(theta)
        key = (id(theta), theta._version, theta.data_ptr(), theta.dtype, theta.device)
        # One slot per depth and device: DataParallel replicas share this dict (a replica copies
        # the module's __dict__), and each device keeps its own entry instead of evicting the others'.
        slot = (str(depth), theta.device)
        hit = self._cache.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        # A plain tensor even under inference_mode, so it stays usable outside that mode too.
        with torch.inference_mode(False), torch.no_grad():
            value = 2.0 * torch.sigmoid(theta)
        self._cache[slot] = (key, value)
        return value
