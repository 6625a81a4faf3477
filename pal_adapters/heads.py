"""Task heads (MT-DNN): dropout and one linear layer per task; shapes and losses come from the kind.

A head maps the encoder output of its task's rows to logits and, given labels, a loss. What it
reads (every token or the pooled vector), the width of its linear layer, the shape of its logits
and its loss are decided by the task's kind (``pal_adapters.tasks``, table in ``tasks/base.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .config import TaskConfig
from .tasks import TaskKind, kind_of


class TaskHead(nn.Module):
    """Dropout, then one linear layer of ``kind.out_features`` outputs."""

    def __init__(self, task: TaskConfig, d_model: int, init_std: float = 0.02):
        super().__init__()
        self.task = task
        self.kind: TaskKind = kind_of(task)
        self.dropout = nn.Dropout(task.dropout)
        self.out = nn.Linear(d_model, self.kind.out_features)
        nn.init.normal_(self.out.weight, std=init_std)
        nn.init.zeros_(self.out.bias)

    @property
    def token_level(self) -> bool:
        """Whether the head reads every token ``(n, T, d)`` rather than the pooled ``(n, d)``."""
        return self.kind.token_level

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` pooled or ``(n, T, d)`` token features -> the kind's logits."""
        return self.kind.shape_logits(self.out(self.dropout(features)))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The kind's scalar loss; bad labels raise an error naming them (see ``TaskKind.loss``)."""
        return self.kind.loss(logits, labels)


class TaskDefinitions(Mapping[str, TaskConfig]):
    """``MultiTaskModel.tasks``: task name -> its ``TaskConfig``, a live read-only view of the heads
    (each head holds its task's definition), so the model keeps one registry of tasks, not two."""

    def __init__(self, heads: nn.ModuleDict):
        self._heads = heads

    def __getitem__(self, name: str) -> TaskConfig:
        return self._heads[name].task

    def __iter__(self) -> Iterator[str]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


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
