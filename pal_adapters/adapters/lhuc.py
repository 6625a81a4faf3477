"""Learning Hidden Unit Contributions: a per-depth vector θ, applied as ``x · 2·sigmoid(θ)``."""

from __future__ import annotations

import torch
from torch import nn


class LHUC(nn.Module):
    """θ ∈ R^{d_m} per adapted depth, initialised to 0 so the scale starts at exactly 1."""

    def __init__(self, d_model: int, depths: tuple[int, ...]):
        super().__init__()
        self.theta = nn.ParameterDict({str(d): nn.Parameter(torch.zeros(d_model)) for d in depths})

    def scale(self, depth: int) -> torch.Tensor:
        """``(d_m,)`` multiplier ``2·sigmoid(θ_depth)``; it broadcasts over ``(B, T, d_m)``."""
        return 2.0 * torch.sigmoid(self.theta[str(depth)])
