"""One task's adapters: an optional TS function and optional LHUC vectors, at a set of depths."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .lhuc import LHUC


class TaskAdapter(nn.Module):
    """Everything one task adds inside the encoder.

    ``ts`` is ``None`` for LHUC alone; ``lhuc`` is ``None`` unless the config asks for it. A site
    asks ``delta`` for the TS contribution of a depth (scaled by LHUC when both are present) or
    ``output_scale`` for the LHUC-alone multiplier of the layer output.
    """

    def __init__(self, config: AdapterConfig, d_model: int, num_layers: int):
        super().__init__()
        self.config = config
        self.depths = frozenset(config.resolved_layers(num_layers))  # a method on top: the last layer
        ordered = tuple(sorted(self.depths))
        method = config.method  # adapters/methods.py: the registry of methods
        self.ts = method.build(d_model, ordered, config) if method.has_ts else None
        self.lhuc = LHUC(d_model, ordered) if config.uses_lhuc else None

    @property
    def placement(self) -> str:
        return self.config.placement

    def delta(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, d_m) -> (B, T, d_m)``: TS(h), times ``2·sigmoid(θ)`` when LHUC is combined
        (a method on top returns h_f = TS(h) itself; it has no LHUC)."""
        out = self.ts(h, depth, keep)
        return out * self.lhuc.scale(depth) if self.lhuc is not None else out

    def output_scale(self, depth: int) -> torch.Tensor:
        """``(d_m,)`` LHUC-alone multiplier of the layer output."""
        return self.lhuc.scale(depth)
