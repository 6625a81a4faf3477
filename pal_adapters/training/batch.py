"""What one training step consumes: this process's rows of a global batch, grouped by task.

A ``Batch`` holds the padded model inputs ``(B, T)`` and one ``TaskSegment`` per task: the task's
contiguous rows ``start:stop``, their labels and training-set indices, and their ``share`` of the
step's loss. A one-task batch is one segment; a mixed batch has its segments in the model's task
order, so the model's (stable) grouping of rows by task leaves them where they are and a
segment's rows are a slice, for the heads and for the teachers alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..tasks import TaskKind


@dataclass(frozen=True)
class TaskSegment:
    """One task's rows of a batch.

    Attributes:
        task: the task's name.
        start, stop: its rows are ``inputs[key][start:stop]``.
        labels: ``(n, ...)``, collated by the task's kind (token labels padded to the batch's T).
        example_index: ``(n,)`` the rows' indices in the task's training set (probability files).
        share: ``n / (global rows / processes)``, the segment's weight in the objective: 1.0 for
            a one-task batch; over processes and steps every example weighs the same. 0: a stand-in
            row, so that this process runs the task's modules too (``Batcher(every_task=True)``).
    """

    task: str
    start: int
    stop: int
    labels: Tensor
    example_index: Tensor
    share: float


@dataclass(frozen=True)
class Batch:
    """Model inputs (``input_ids``, ``attention_mask``, ... each ``(B, T)``) and their segments."""

    inputs: dict[str, Tensor]
    segments: tuple[TaskSegment, ...]

    @property
    def task_ids(self) -> list[str]:
        """The task of every row, ``B`` names."""
        return [s.task for s in self.segments for _ in range(s.stop - s.start)]

    def rows(self, segment: TaskSegment) -> dict[str, Tensor]:
        """The model inputs of one segment's rows, ``(n, T)`` each (views, no copy)."""
        return {k: v[segment.start:segment.stop] for k, v in self.inputs.items()}

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``MultiTaskModel.forward``: ``task=`` and its labels for one
        segment, else ``task_ids=`` (one per row) and labels per task."""
        if len(self.segments) == 1:
            return {**self.inputs, "labels": self.segments[0].labels, "task": self.segments[0].task}
        return {**self.inputs, "labels": {s.task: s.labels for s in self.segments}, "task_ids": self.task_ids}

    def to(self, device: torch.device | str) -> Batch:
        segments = tuple(TaskSegment(s.task, s.start, s.stop, s.labels.to(device), s.example_index.to(device),
                                     s.share) for s in self.segments)
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, segments)


def join(parts: list[tuple[str, dict[str, Tensor]]], pad_id: int, kinds: Mapping[str, TaskKind] | None = None,
         *, global_rows: int | None = None, world: int = 1) -> Batch:
    """Join per-task collated batches (``streams.collate``), in the given order, into one ``Batch``.

    Inputs are padded to the longest (``input_ids`` with ``pad_id``, the rest with 0); ``kinds``
    (task -> kind) re-pad each task's labels to that length (``TaskKind.pad_labels``: token labels
    ``(n, T_task) -> (n, T)`` with -100). ``global_rows``: the rows of the global batch this is
    ``world``-th of (default: these rows, one process), which sets each segment's ``share``.
    """
    if not parts:
        return Batch({}, ())
    kinds = kinds or {}
    length = max(b["input_ids"].shape[1] for _, b in parts)
    keys = [k for k in parts[0][1] if k not in ("labels", "example_index")]
    inputs = {k: _cat([_pad(b[k], length, pad_id if k == "input_ids" else 0) for _, b in parts]) for k in keys}
    nominal = (global_rows or sum(b["input_ids"].shape[0] for _, b in parts)) / world
    segments, start = [], 0
    for task, b in parts:
        n = b["input_ids"].shape[0]
        labels = kinds[task].pad_labels(b["labels"], length) if task in kinds else b["labels"]
        segments.append(TaskSegment(task, start, start + n, labels, b["example_index"], n / nominal))
        start += n
    return Batch(inputs, tuple(segments))


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _pad(x: Tensor, length: int, fill: int) -> Tensor:
    if x.shape[1] == length:
        return x
    pad = torch.full((x.shape[0], length - x.shape[1]), fill, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)
