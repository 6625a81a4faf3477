"""Combining task losses (sum, fixed weights, uncertainty) and mixing distillation with gold labels.

Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) learns s_t = log σ_t² per task and
combines

    L = Σ_t exp(−s_t)·L_t + s_t

This is the common "log-variance" variant: exactly twice Kendall et al.'s regression objective
L_t/(2σ_t²) + log σ_t, used for every task type (their classification form L_t/σ_t² + log σ_t
halves the regulariser). Predicting s rather than σ keeps it unconstrained and stable. For a
fixed L_t the optimum is s_t = log L_t, so noisy (high-loss) tasks are down-weighted. s_t must not
be weight-decayed (decay would pull every σ_t to 1): its parameters live under
``UNCERTAINTY_PREFIX``, see ``LossWeighting.no_decay_parameter_names``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from pal_adapters.validation import check_choice

WeightingMode = Literal["sum", "fixed", "uncertainty"]

# Attribute name of the learnable log-variances; named parameters start with it.
UNCERTAINTY_PREFIX = "log_variances"


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("tasks=() is empty; give the names of the tasks whose losses are combined")
    for task in tasks:
        # nn.ParameterDict keys become attribute paths, so they cannot contain dots.
        if not isinstance(task, str) or not task or "." in task:
            raise ValueError(f"task name {task!r} must be a non-empty string without '.'")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={list(tasks)} contains duplicates")
    return tasks


def _check_weights(weights: Mapping[str, float] | None, tasks: tuple[str, ...]) -> dict[str, float]:
    if weights is None:
        raise ValueError(f"mode='fixed' needs weights for every task: {list(tasks)}")
    unknown = sorted(set(weights) - set(tasks))
    missing = sorted(set(tasks) - set(weights))
    if unknown or missing:
        raise ValueError(f"weights has unknown tasks {unknown} and lacks tasks {missing}; "
                         f"valid tasks: {list(tasks)}")
    for task, w in weights.items():
        if not (isinstance(w, (int, float)) and 0.0 <= float(w) < float("inf")):
            raise ValueError(f"weights[{task!r}]={w!r} must be a finite number >= 0")
    return {task: float(weights[task]) for task in tasks}


class LossWeighting(nn.Module):
    """Combine per-task scalar losses into one training loss.

    Modes: ``"sum"`` (Σ_t L_t), ``"fixed"`` (Σ_t w_t·L_t with ``weights`` for every task) and
    ``"uncertainty"`` (Σ_t exp(−s_t)·L_t + s_t, learnable s_t initialised to 0; see module docs).
    Only the tasks present in a call are combined, so a step that trains one task passes one loss.
    """

    def __init__(self, tasks: Sequence[str], mode: WeightingMode = "sum",
                 weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        check_choice("mode", mode, get_args(WeightingMode))
        self.tasks = _check_tasks(tasks)
        self.mode = mode
        if mode != "fixed" and weights is not None:
            raise ValueError(f"weights are only used with mode='fixed', not mode={mode!r}")
        self.weights = _check_weights(weights, self.tasks) if mode == "fixed" else None
        if mode == "uncertainty":
            # s_t = log σ_t² = 0 → weight 1: training starts from the plain sum.
            params = {t: nn.Parameter(torch.zeros(())) for t in self.tasks}
            setattr(self, UNCERTAINTY_PREFIX, nn.ParameterDict(params))

    def forward(self, task_losses: Mapping[str, Tensor]) -> Tensor:
        """``{task: scalar loss}`` -> the combined scalar loss ``()``."""
        if not task_losses:
            raise ValueError("task_losses is empty; pass at least one task's loss")
        unknown = sorted(set(task_losses) - set(self.tasks))
        if unknown:
            raise ValueError(f"unknown tasks {unknown} in task_losses; valid tasks: {list(self.tasks)}")
        terms = []
        for task, loss in task_losses.items():
            if loss.dim() != 0:
                raise ValueError(f"loss of task {task!r} has shape {tuple(loss.shape)}; expected a scalar")
            terms.append(self._weighted(task, loss))
        return torch.stack(terms).sum()

    def _weighted(self, task: str, loss: Tensor) -> Tensor:
        if self.mode == "sum":
            return loss
        if self.mode == "fixed":
            assert self.weights is not None
            return self.weights[task] * loss
        s = getattr(self, UNCERTAINTY_PREFIX)[task]
        return torch.exp(-s) * loss + s

    def task_weights(self) -> dict[str, float]:
        """The current multiplier of each task's loss (uncertainty: exp(−s_t)), for logging."""
        if self.mode == "sum":
            return dict.fromkeys(self.tasks, 1.0)
        if self.mode == "fixed":
            assert self.weights is not None
            return dict(self.weights)
        s = getattr(self, UNCERTAINTY_PREFIX)
        return {t: float(torch.exp(-s[t].detach())) for t in self.tasks}

    def no_decay_parameter_names(self, prefix: str = "") -> list[str]:
        """Full names of parameters to exclude from weight decay (all of this module's, if any).

        ``prefix`` is this module's name in the parent, e.g. ``"loss_weighting."``.
        """
        return [prefix + name for name, _ in self.named_parameters()]


def soft_targets(teacher_probs: Sequence[Tensor]) -> Tensor:
    """Mean of K teachers' outputs (``TaskKind.teacher_targets``): K x ``(B, C)`` class
    probabilities -> ``(B, C)``; for regression teachers, K x ``(B,)`` predictions -> ``(B,)``.
    """
    if len(teacher_probs) == 0:
        raise ValueError("teacher_probs is empty; give at least one teacher's probabilities")
    shapes = [tuple(p.shape) for p in teacher_probs]
    if len(set(shapes)) != 1:
        raise ValueError(f"teacher outputs have different shapes {shapes}; all must match")
    return torch.stack(list(teacher_probs)).mean(dim=0)


def mixed_loss(kd: Tensor, gold: Tensor | None, alpha: float) -> Tensor:
    """``alpha``·KD + (1 − ``alpha``)·gold, scalars ``()``: ``kd`` from the kind's
    ``distillation_loss``, ``gold`` the loss the task head already computed on the gold labels.

    ``alpha = 1`` is pure distillation (``gold`` is then not needed), ``alpha = 0`` pure supervision.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1] (1 = pure distillation, 0 = gold labels only)")
    if alpha == 1.0:
        return kd
    if gold is None:
        raise ValueError(f"alpha={alpha!r} mixes in the gold-label loss, so the batch needs labels")
    return alpha * kd + (1.0 - alpha) * gold
