"""Resumable per-task example streams, and each task's part of the batches a training step consumes.

Each task's training set is read as an endless stream: epoch ``e`` is an order of all its
examples (length-grouped, seeded by the run seed, the task and ``e``), and a cursor
``(epoch, position)`` says what comes next. ``take(n)`` returns the next ``n`` example indices.
Every process builds the same global batch and keeps its own share of the rows, so a run on
``k`` processes sees exactly the data of a one-process run with the same global batch, and a
cursor saved in a checkpoint resumes the stream exactly. A task kind's groups of rows (ranking:
one query's ``num_candidates`` candidates) are never split: ``take`` rounds up to whole groups.
``collate`` pads one task's rows; ``batch.join`` joins the tasks' parts, ``batcher.py`` draws them.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import datasets
import torch

from ..tasks import TaskKind
from .batch import join
from .data import DynamicPaddingCollator, LengthGroupedBatchSampler


class TaskStream:
    """An endless, seeded, resumable order over one task's examples (``kind``: the task's kind,
    which collates its labels and fixes its group size; None = a classification task's)."""

    def __init__(self, task: str, dataset: datasets.Dataset, batch_size: int, seed: int,
                 kind: TaskKind | None = None):
        self.task, self.dataset, self.kind = task, dataset, kind
        self.group_size = kind.group_size if kind is not None else 1
        lengths = dataset["length"] if "length" in dataset.column_names else [len(x) for x in dataset["input_ids"]]
        seed = seed * 1_000_003 + zlib.crc32(task.encode())  # each task its own, stable, order
        self._sampler = LengthGroupedBatchSampler(list(lengths), batch_size, seed=seed, group_size=self.group_size)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _current_order(self) -> list[int]:
        if self._order is None:
            self._sampler.set_epoch(self.epoch)
            self._order = [i for batch in self._sampler for i in batch]
        return self._order

    def take(self, n: int) -> list[int]:
        """The next ``n`` example indices (rounded up to whole groups), continuing into the next
        epoch when this one ends."""
        n = -(-n // self.group_size) * self.group_size
        out: list[int] = []
        while len(out) < n:
            order = self._current_order()
            chunk = order[self.position:self.position + n - len(out)]
            out += chunk
            self.position += len(chunk)
            if self.position == len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


def shard(indices: list[int], rank: int, world: int, group: int = 1, whole: bool = True) -> list[int]:
    """This process's rows of a global batch: every ``world``-th group of ``group`` consecutive rows
    (a ranking query's candidates stay on one process), starting at ``rank``. With ``whole`` the
    groups must split evenly over the processes (a one-task batch); mixed batches allow uneven shares."""
    groups = [indices[i:i + group] for i in range(0, len(indices), group)]
    if whole and len(groups) % world:
        raise ValueError(f"a global batch of {len(indices)} rows cannot be split over {world} processes; "
                         f"choose a batch_size divisible by {world * group}")
    return [i for g in groups[rank::world] for i in g]


def collate(stream: TaskStream, indices: list[int], collator: DynamicPaddingCollator) -> dict[str, torch.Tensor]:
    """Padded model inputs (and ``labels``, collated by the stream's kind) for ``indices`` of one
    task, plus their ``example_index``. A kind's extra columns are not training inputs: dropped."""
    rows = stream.dataset.select(indices)
    collator = dataclasses.replace(collator, kind=stream.kind or collator.kind, keep_extra=False)
    batch = collator([dict(row) for row in rows])
    batch["example_index"] = torch.tensor(indices, dtype=torch.long)
    return batch


def collate_mixed(parts: list[tuple[str, dict[str, torch.Tensor]]], pad_id: int,
                  kinds: Mapping[str, TaskKind] | None = None) -> dict[str, Any]:
    """Per-task batches joined (``batch.join``) in the model's keyword form, for a mixed forward
    outside the trainer: padded inputs, ``task_ids`` per row, ``labels`` and ``example_index`` per task.
    """
    batch = join(parts, pad_id, kinds)
    return {**batch.inputs, "task_ids": batch.task_ids, "labels": {s.task: s.labels for s in batch.segments},
            "example_index": {s.task: s.example_index for s in batch.segments}}
