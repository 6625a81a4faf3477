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
    "identity": None,  # no op at all: every aten op is a dispatch (a kernel launch on a GPU)
}


def apply_activation(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)``, or ``x`` itself when ``fn`` is None (the identity costs no op)."""
    return x if fn is None else fn(x)


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

    ``(B, T, d_s) -> (B, T, d_s)``. Q, K and V come from ONE ``Linear(d_s, 3·d_s)`` named ``qkv``
    (rows ``[0, d_s)`` are Q, ``[d_s, 2·d_s)`` K, ``[2·d_s, 3·d_s)`` V, each with bias); scores are
    scaled by ``1/sqrt(d_s/heads)``, padding keys are masked, dropout acts on the probabilities.
    The forward is five aten ops in the common case (linear, as_strided, unbind, SDPA, as_strided):
    on a GPU at small batches every op is a kernel launch or a dispatch, so the count sets the cost.
    """

    def __init__(self, d_small: int, num_heads: int, dropout: float, init_std: float):
        super().__init__()
        if d_small % num_heads:
            raise ValueError(f"hidden_size={d_small} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = init_linear(nn.Linear(d_small, 3 * d_small), init_std)

    def _split_heads(self, qkv: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, 3·d_s)`` -> q, k, v views of ``(B, heads, T, d_s/heads)`` (two ops, no copy)."""
        b, t, three_d = qkv.shape
        d, hd = three_d // 3, three_d // 3 // self.num_heads
        if _tracing():  # a graph (ONNX, torch.export) has no strides: say it with portable view ops
            return qkv.unflatten(-1, (3, self.num_heads, hd)).permute(2, 0, 3, 1, 4).unbind(0)
        if not qkv.is_contiguous():  # a linear's output always is; anything else is made so
            qkv = qkv.contiguous()
        # The same view as .unflatten(-1, (3, heads, hd)).permute(2, 0, 3, 1, 4), in one op.
        return qkv.as_strided((3, b, self.num_heads, t, hd), (d, t * three_d, hd, three_d, 1)).unbind(0)

    @staticmethod
    def _merge_heads(ctx: torch.Tensor) -> torch.Tensor:
        """``(B, heads, T, hd) -> (B, T, heads·hd)``: a view when SDPA wrote heads next to each
        other in memory (its CPU flash kernel and the GPU kernels do), else transpose + copy."""
        b, h, t, hd = ctx.shape
        if not _tracing() and ctx.stride(3) == 1 and ctx.stride(1) == hd and ctx.stride(2) == h * hd:
            return ctx.as_strided((b, t, h * hd), (ctx.stride(0), h * hd, 1))
        return ctx.transpose(1, 2).reshape(b, t, h * hd)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``keep``: ``(B, 1, 1, T)`` bool, True where a key may be attended, or None."""
        q, k, v = self._split_heads(self.qkv(x))
        p = self.dropout if self.training else 0.0
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p))


def _tracing() -> bool:
    """Whether a graph is being captured (``torch.export``, the ONNX exporters, ``jit.trace``): its
    runtime chooses its own memory layout, so ``as_strided`` over the eager kernels' strides is wrong."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def fuse_legacy_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict saved before Q/K/V were fused (``...query|key|value.weight|bias``) to the
    current names (``...qkv.weight|bias``, rows Q then K then V). Other entries pass unchanged."""
    out = dict(tensors)
    for name in tensors:
        stem, sep, leaf = name.rpartition(".query.")
        parts = [f"{stem}.{p}.{leaf}" for p in ("query", "key", "value")]
        if sep and all(p in out for p in parts):
            out[f"{stem}.qkv.{leaf}"] = torch.cat([out.pop(p) for p in parts])
    return out
