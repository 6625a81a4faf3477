"""The training objective of one batch, one rule for one-task and mixed batches alike:

    loss = Σ_t share_t · w_t(L_t),    L_t = alpha·KD_t + (1 − alpha)·gold_t   (t has teachers)
                                      L_t = gold_t                            (otherwise)

over the batch's task segments t. ``gold_t`` is the loss the task's head computed on its rows
(``outputs.task_losses``), ``KD_t`` the distillation loss against the teachers' soft targets for
those rows (``distill.py``), ``w_t`` the loss weighting (sum, fixed, uncertainty: ``losses.py``)
and ``share_t`` the segment's rows over the nominal local batch (``batch.TaskSegment``): 1 for a
one-task batch, so that averaged over processes and steps every example weighs the same and a
mixed batch's expected loss equals that of one-task batches drawn by the same probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

from ..tasks import TaskKind
from .batch import Batch, TaskSegment
from .distill import DistillConfig, TeacherEnsemble, distill_task_loss
from .losses import LossWeighting

if TYPE_CHECKING:
    from ..model import MultiTaskOutput


class StepLoss(NamedTuple):
    """``total``: the scalar to back-propagate; ``tasks``: each task's ``L_t`` (for the log)."""

    total: Tensor
    tasks: dict[str, Tensor]


class Objective:
    """``objective(outputs, batch) -> StepLoss`` (see the module docstring).

    Args:
        weighting: combines the task losses; its parameters (uncertainty) train with the model.
        kinds: task -> kind, for the distillation loss of tasks with teachers.
        teachers / distill: the teacher ensemble and its config (``alpha``), or None.
    """

    def __init__(self, weighting: LossWeighting, kinds: Mapping[str, TaskKind],
                 teachers: TeacherEnsemble | None = None, distill: DistillConfig | None = None):
        if (teachers is None) != (distill is None):
            raise ValueError("give teachers and their DistillConfig together, or neither")
        self.weighting, self.kinds, self.teachers, self.distill = weighting, dict(kinds), teachers, distill

    def __call__(self, outputs: MultiTaskOutput, batch: Batch) -> StepLoss:
        losses = {s.task: self.task_loss(outputs, batch, s) for s in batch.segments}
        total = sum(s.share * self.weighting({s.task: losses[s.task]}) for s in batch.segments)
        return StepLoss(total, losses)

    def task_loss(self, outputs: MultiTaskOutput, batch: Batch, segment: TaskSegment) -> Tensor:
        """``L_t`` of one segment, a scalar ``()``."""
        task = segment.task
        gold = outputs.task_losses[task]
        if self.teachers is None or task not in self.distill.tasks:
            return gold
        logits = outputs.logits[task] if isinstance(outputs.logits, dict) else outputs.logits
        targets = self.teachers.targets(task, batch.rows(segment), segment.example_index)
        return distill_task_loss(self.kinds[task], logits, targets, gold, self.distill.alpha)
