"""Task heads (MT-DNN) and their losses.

Every head maps the encoder output of its own rows to logits and, given labels, a loss:

| type                   | reads          | logits          | labels                          | loss |
|------------------------|----------------|-----------------|---------------------------------|------|
| classification         | pooled (n, d)  | (n, C)          | (n,) class ids                  | CE |
| regression             | pooled (n, d)  | (n,)            | (n,) floats (STS-B: 0..5)       | MSE |
| multi_label            | pooled (n, d)  | (n, C)          | (n, C) 0/1                      | BCE |
| ranking                | pooled (n, d)  | (n,) scores     | (n,) 1 marks the positive      | listwise CE |
| token_classification   | tokens (n,T,d) | (n, T, C)       | (n, T), -100 ignored            | CE |
| extractive_qa          | tokens (n,T,d) | (n, T, 2)       | (n, 2) start, end positions     | CE avg |

Ranking rows come in consecutive groups of ``num_candidates`` (one query's candidates), and
the loss is ``-log P(positive)`` with P a softmax over the group (MT-DNN's relevance ranking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TaskConfig

TOKEN_LEVEL = ("token_classification", "extractive_qa")


class TaskHead(nn.Module):
    """Dropout, then one linear layer; ``loss`` is chosen by the task type."""

    def __init__(self, task: TaskConfig, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.task = task
        self.dropout = nn.Dropout(task.dropout)
        self.out = nn.Linear(d_model, task.num_labels)
        nn.init.normal_(self.out.weight, std=init_std)
        nn.init.zeros_(self.out.bias)

    @property
    def token_level(self) -> bool:
        return self.task.type in TOKEN_LEVEL

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` pooled or ``(n, T, d)`` token features -> logits (see the module table)."""
        logits = self.out(self.dropout(features))
        return logits.squeeze(-1) if self.task.type in ("regression", "ranking") else logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.task.type
        if kind == "classification":
            return F.cross_entropy(logits.float(), labels.long())
        if kind == "regression":
            return F.mse_loss(logits.float(), labels.float())
        if kind == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if kind == "token_classification":
            return F.cross_entropy(logits.float().flatten(0, 1), labels.long().flatten(), ignore_index=-100)
        if kind == "extractive_qa":
            start, end = logits.float().unbind(-1)  # (n, T) each
            labels = labels.long()
            return (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2
        return ranking_loss(logits.float(), labels, self.task.num_candidates)


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, group: int) -> torch.Tensor:
    """``-log softmax(scores of one query's candidates)[positive]``, averaged over queries.

    ``scores``, ``labels``: ``(n,)`` with ``n = queries · group``; exactly one 1 per group.
    """
    if scores.numel() % group:
        raise ValueError(f"ranking task got {scores.numel()} rows, not a multiple of num_candidates={group}")
    groups = labels.view(-1, group)
    positives = groups.sum(-1)
    bad = (positives != 1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"ranking labels must mark exactly one positive (1) per group of {group} rows; groups "
                         f"{bad[:5]} have {positives[bad[:5]].tolist()} positives")
    return F.cross_entropy(scores.view(-1, group), groups.argmax(-1))


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooled: torch.Tensor | None, how: str) -> torch.Tensor:
    """``(n, T, d) -> (n, d)`` by the first token, the backbone's pooler output, or a masked mean."""
    if how == "cls":
        return hidden[:, 0]
    if how == "pooler":
        return pooled
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
