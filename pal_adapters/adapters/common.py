"""Pieces shared by the adapter methods: activations, initialisation, attention in d_s."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdapterConfig

ACTIVATIONS = {
    "gelu": F.gelu,  # erf GELU, as in the reference code
    "relu": F.relu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}


def init_linear(layer: nn.Linear, std: float, zero: bool = False) -> nn.Linear:
    """Normal(0, std) weights and zero bias; all zeros when ``zero`` (identity-at-init decoders)."""
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def down_up(d_model: int, d_small: int, config: AdapterConfig) -> tuple[nn.Linear, nn.Linear]:
    """V^E: d_m -> d_s and V^D: d_s -> d_m, both with bias; V^D is zero for identity init."""
    down = init_linear(nn.Linear(d_model, d_small), config.init_std)
    up = init_linear(nn.Linear(d_small, d_model), config.init_std, zero=config.init == "identity")
    return down, up


class ProjectedSelfAttention(nn.Module):
    """Multi-head self-attention inside d_s, with no output projection (the 'A' of a PAL).

    ``(B, T, d_s) -> (B, T, d_s)``. Q, K, V are ``Linear(d_s, d_s)`` with bias; scores are scaled
    by ``1/sqrt(d_s/heads)``, padding keys are masked, dropout acts on the probabilities.
    """

    def __init__(self, d_small: int, num_heads: int, dropout: float, init_std: float):
        super().__init__()
        if d_small % num_heads:
            raise ValueError(f"hidden_size={d_small} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = init_linear(nn.Linear(d_small, d_small), init_std)
        self.key = init_linear(nn.Linear(d_small, d_small), init_std)
        self.value = init_linear(nn.Linear(d_small, d_small), init_std)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, d_s) -> (B, heads, T, d_s / heads)
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``keep``: ``(B, 1, 1, T)`` bool, True where a key may be attended, or None."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        p = self.dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        b, _, t, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, t, -1)
