"""Low-rank adapters: TS(h) = out_act(V^D · g(V^E · h)), one V^E/V^D pair per layer (not shared)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .common import ACTIVATIONS, apply_activation, down_up


class LowRank(nn.Module):
    """Per-depth bottleneck ``d_m -> d_s -> d_m``; g = ``config.activation`` (GELU in the paper)."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__()
        self.d_small = config.resolved_hidden_size(d_model)
        pairs = {str(d): down_up(d_model, self.d_small, config) for d in depths}
        self.down = nn.ModuleDict({k: p[0] for k, p in pairs.items()})
        self.up = nn.ModuleDict({k: p[1] for k, p in pairs.items()})
        self._act = ACTIVATIONS[config.activation]
        self._out_act = ACTIVATIONS[config.output_activation]

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, d_m) -> (B, T, d_m)``; ``keep`` is unused (no attention)."""
        k = str(depth)
        return apply_activation(self._out_act, self.up[k](apply_activation(self._act, self.down[k](h))))
