"""Projected Attention Layers (Stickland & Murray 2019) and their feed-forward variant.

TS(h) = out_act(V^D · g(V^E · h)). V^E and V^D belong to the task and are shared by every layer
it adapts; only g is per layer. For a PAL g is multi-head self-attention in d_s, for PAL-FFN a
small feed-forward network in d_s.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .common import ACTIVATIONS, ProjectedSelfAttention, apply_activation, down_up, init_linear


class SharedProjection(nn.Module):
    """Base of PAL and PAL-FFN: one V^E/V^D pair, a per-depth ``inner`` module ``g``."""

    inner: nn.ModuleDict

    def __init__(self, d_model: int, config: AdapterConfig):
        super().__init__()
        self.d_small = config.resolved_hidden_size(d_model)
        self.down, self.up = down_up(d_model, self.d_small, config)
        self._out_act = ACTIVATIONS[config.output_activation]

    def _g(self, depth: int, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, d_m) -> (B, T, d_m)``: the task-specific function at ``depth``."""
        return apply_activation(self._out_act, self.up(self._g(depth, self.down(h), keep)))


class PAL(SharedProjection):
    """Projected attention: g = multi-head self-attention in d_s (one per adapted depth)."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__(d_model, config)
        self.inner = nn.ModuleDict({
            str(d): ProjectedSelfAttention(self.d_small, config.num_heads, config.dropout, config.init_std)
            for d in depths
        })

    def _g(self, depth: int, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.inner[str(depth)](x, keep)


class FeedForward(nn.Module):
    """``(B, T, d_s) -> (B, T, d_s)``: ``num_layers`` of Linear + activation, dropout after each."""

    def __init__(self, d_small: int, num_layers: int, config: AdapterConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            init_linear(nn.Linear(d_small, d_small), config.init_std) for _ in range(num_layers)
        )
        self._act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.training and self.dropout.p > 0  # in eval, dropout is a no-op: skip its op
        for layer in self.layers:
            x = apply_activation(self._act, layer(x))
            x = self.dropout(x) if drop else x
        return x


class PALFFN(SharedProjection):
    """The paper's fourth variant: g = a one- or two-layer feed-forward net in d_s."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__(d_model, config)
        self.inner = nn.ModuleDict({str(d): FeedForward(self.d_small, config.ffn_layers, config) for d in depths})

    def _g(self, depth: int, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.inner[str(depth)](x)
