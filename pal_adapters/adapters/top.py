"""Task-specific functions on top of the encoder (PALs §3.2): ``h_f = TS(h_L)``, one per task.

Unlike the in-layer methods, these leave every encoder layer alone: the encoder runs once for all
tasks and each task maps its output (``placement="top"``, placement.py). Both are identity at
initialisation (``init="identity"``), which the reference code is not (see below).

- ``TopLayer`` ("BERT layer on top"): one more transformer layer per task, in d_m, with ``num_heads``
  heads and a feed-forward width d_s (default 4·d_m: BERT's 3072 at 768). Pre-LN residual form,
  ``x = h + O·attn(LN1 h)``, ``h_f = x + W2·act(W1·LN2 x)``, so zero O and W2 make it the identity.
  The reference code (Bert-n-Pals ``bert_lay_top``) uses a post-LN ``BERTLayer`` that *replaces*
  h_L, randomly initialised, so its initial output is unrelated to the encoder's.
- ``TopAttention`` ("projected attention on top"): ``h_f = h + V^D g(V^E h)`` with g a stack of
  ``TOP_ATTENTION_LAYERS`` (6, the paper's best) post-LN attention layers in d_s,
  ``x ↦ LN(x + dropout(O·attn(x)))`` (the reference's ``BERTAttention(config, 12)`` in d_s), and
  V^D zero at initialisation. The reference code has no outer residual (``h_f = V^D g(V^E h)``,
  V^D random); we add it so the task starts from the encoder's own output.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .common import ACTIVATIONS, ProjectedSelfAttention, apply_activation, down_up, init_linear

TOP_ATTENTION_LAYERS = 6  # PALs §3.2: six attention layers on top worked best
LN_EPS = 1e-12  # BERT's LayerNorm epsilon, as in the reference code


def _attention(width: int, config: AdapterConfig) -> ProjectedSelfAttention:
    if width % config.num_heads:
        raise ValueError(f"num_heads={config.num_heads} does not divide the width {width} of the attention "
                         f"of kind={config.kind!r}; choose num_heads dividing it")
    return ProjectedSelfAttention(width, config.num_heads, config.dropout, config.init_std)


class AttentionBlock(nn.Module):
    """``(B, T, d) -> (B, T, d)``: self-attention with an output projection ``out`` and a residual.

    ``pre_ln=True``: ``x + drop(O·attn(LN x))`` (identity when O = 0); ``False``: ``LN(x + drop(O·attn(x)))``.
    """

    def __init__(self, width: int, config: AdapterConfig, pre_ln: bool, zero_out: bool):
        super().__init__()
        self.attn = _attention(width, config)
        self.out = init_linear(nn.Linear(width, width), config.init_std, zero=zero_out)
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_ln = pre_ln

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            return x + self.dropout(self.out(self.attn(self.norm(x), keep)))
        return self.norm(x + self.dropout(self.out(self.attn(x, keep))))


class TopLayer(nn.Module):
    """A transformer layer per task on top of the encoder, ``(B, T, d_m) -> (B, T, d_m)``."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__()
        zero = config.init == "identity"
        self.d_small = config.resolved_hidden_size(d_model)  # the feed-forward width
        self.attention = AttentionBlock(d_model, config, pre_ln=True, zero_out=zero)
        self.ffn_norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.ffn_in = init_linear(nn.Linear(d_model, self.d_small), config.init_std)
        self.ffn_out = init_linear(nn.Linear(self.d_small, d_model), config.init_std, zero=zero)
        self.dropout = nn.Dropout(config.dropout)
        self._act = ACTIVATIONS[config.activation]

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None) -> torch.Tensor:
        """``h_f``, the task's new encoder output (not a delta): ``keep`` masks padding keys."""
        x = self.attention(h, keep)
        return x + self.dropout(self.ffn_out(apply_activation(self._act, self.ffn_in(self.ffn_norm(x)))))


class TopAttention(nn.Module):
    """Projected attention on top, ``(B, T, d_m) -> (B, T, d_m)``: ``h + V^D g(V^E h)``."""

    def __init__(self, d_model: int, depths: tuple[int, ...], config: AdapterConfig):
        super().__init__()
        self.d_small = config.resolved_hidden_size(d_model)
        self.down, self.up = down_up(d_model, self.d_small, config)
        self.inner = nn.ModuleList(AttentionBlock(self.d_small, config, pre_ln=False, zero_out=False)
                                   for _ in range(TOP_ATTENTION_LAYERS))
        self._out_act = ACTIVATIONS[config.output_activation]

    def forward(self, h: torch.Tensor, depth: int, keep: torch.Tensor | None) -> torch.Tensor:
        """``h_f``, the task's new encoder output (not a delta)."""
        x = self.down(h)
        for block in self.inner:
            x = block(x, keep)
        return h + apply_activation(self._out_act, self.up(x))
