"""The batcher: owns the task streams and the sampler, and yields each micro-step's ``Batch``.

    next(batcher):  sampler.draw -> rows per task (one task, or a mixed draw) -> each task's
                    stream.take -> this process's share -> collate per task -> join, in task order

One clock: the sampler's position counts micro-steps. ``grad_accum`` of them make an optimizer
step, a sampling epoch (annealing, evaluation at epoch ends) is ``steps_per_epoch`` of them. The
streams' cursors are positions in each task's data, not time. ``state_dict()`` holds the sampler
and the stream cursors (a checkpoint's ``"sampler"`` and ``"streams"``), so a resumed run draws
the same batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .batch import Batch, join
from .config import TrainConfig
from .data import DynamicPaddingCollator
from .sampling import SamplingConfig, TaskSampler
from .streams import TaskStream, collate, shard


@dataclass(frozen=True)
class Schedule:
    """How long the run is, in micro-steps of the sampler's clock.

    Attributes:
        batches: task -> batches in one pass over its training set (the sampler's sizes).
        steps_per_epoch: micro-steps of a sampling epoch (default: each task's batches once).
        grad_accum: micro-steps per optimizer step.
        total_steps: optimizer steps of the run (``max_steps``, else ``epochs`` epochs).
    """

    batches: dict[str, int]
    steps_per_epoch: int
    grad_accum: int
    total_steps: int

    @classmethod
    def of(cls, config: TrainConfig, examples: Mapping[str, int]) -> Schedule:
        """The schedule of ``config`` for tasks with ``examples`` training examples each; refuses a
        run longer than its ``epochs`` (the sampler would run out mid-run)."""
        c = config
        batches = {n: math.ceil(count / c.batch_size) for n, count in examples.items()}
        per_epoch = c.steps_per_epoch or (math.ceil(c.max_steps * c.grad_accum / c.epochs) if c.max_steps
                                          else sum(batches.values()))
        total = c.max_steps or (c.epochs * per_epoch) // c.grad_accum
        if total * c.grad_accum > c.epochs * per_epoch:
            raise ValueError(f"training: max_steps={c.max_steps} x grad_accum={c.grad_accum} micro-steps exceed "
                             f"epochs={c.epochs} x steps_per_epoch={per_epoch}; raise epochs or steps_per_epoch, "
                             "or lower max_steps")
        return cls(batches, per_epoch, c.grad_accum, total)

    @property
    def epoch_steps(self) -> int:
        """Optimizer steps per sampling epoch (at least 1)."""
        return max(1, self.steps_per_epoch // self.grad_accum)


class Batcher:
    """This process's share of every global batch, drawn by ``sampler`` from ``streams``.

    ``streams`` must be in the model's task order (a mixed batch's segments follow it).
    ``mixed``: a task per row (``sampler.draw(mixed=True)``) instead of one task per batch.
    Every process draws the same global batch and keeps every ``world``-th group of each task's
    rows from ``rank`` on (a one-task batch must split evenly; see ``streams.shard``).
    ``every_task``: a process left without rows of a drawn task gets a stand-in, the task's first
    group of the global batch with ``share`` 0, so every process runs every drawn task's adapter
    and head (FSDP's units must run on all processes alike; DDP's reducer waits for every
    process's backward) and the loss does not change.
    """

    def __init__(self, streams: Mapping[str, TaskStream], sampler: TaskSampler, *, batch_size: int,
                 mixed: bool, collator: DynamicPaddingCollator, pad_id: int, rank: int = 0, world: int = 1,
                 every_task: bool = False):
        if list(sampler.tasks) != list(streams):
            raise ValueError(f"the sampler's tasks {list(sampler.tasks)} are not the streams' {list(streams)}")
        self.streams, self.sampler = dict(streams), sampler
        self.batch_size, self.mixed, self.collator, self.pad_id = batch_size, mixed, collator, pad_id
        self.rank, self.world, self.every_task = rank, world, every_task

    @classmethod
    def for_run(cls, config: TrainConfig, streams: Mapping[str, TaskStream], schedule: Schedule,
                collator: DynamicPaddingCollator, pad_id: int, rank: int = 0, world: int = 1,
                every_task: bool = False) -> Batcher:
        """The batcher of a training run: its sampler follows ``config.sampling`` over ``schedule``."""
        sampling = SamplingConfig(config.sampling, config.seed, config.epochs, schedule.steps_per_epoch)
        try:
            sampler = TaskSampler(schedule.batches, sampling)
        except ValueError as err:  # the sampler's rule, in the run's terms
            raise ValueError(f"training: sampling={config.sampling!r} with epochs={config.epochs}, "
                             f"max_steps={config.max_steps}, grad_accum={config.grad_accum}: {err}") from None
        return cls(streams, sampler, batch_size=config.batch_size, mixed=config.mixed_batches,
                   collator=collator, pad_id=pad_id, rank=rank, world=world, every_task=every_task)

    @property
    def micro_step(self) -> int:
        """Micro-batches drawn so far: the run's clock."""
        return self.sampler.position

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        """The next micro-batch: this process's rows, grouped by task (possibly none, in a mixed
        batch whose few rows went to other processes)."""
        parts, stand_ins, global_rows = [], set(), 0
        for task, n in self.sampler.draw(self.batch_size, self.mixed).items():
            stream = self.streams[task]
            rows = stream.take(n)
            global_rows += len(rows)
            mine = shard(rows, self.rank, self.world, stream.group_size, whole=not self.mixed)
            if not mine and self.every_task:
                mine = rows[:stream.group_size]
                stand_ins.add(task)
            if mine:
                parts.append((task, collate(stream, mine, self.collator)))
        kinds = {t: self.streams[t].kind for t, _ in parts if self.streams[t].kind is not None}
        batch = join(parts, self.pad_id, kinds, global_rows=global_rows, world=self.world)
        if not stand_ins:
            return batch
        segments = tuple(dataclasses.replace(s, share=0.0) if s.task in stand_ins else s for s in batch.segments)
        return dataclasses.replace(batch, segments=segments)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "streams": {n: s.state_dict() for n, s in self.streams.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume the sampler and every stream; refuse a state of other tasks."""
        if set(state["streams"]) != set(self.streams):
            raise ValueError(f"the saved streams {sorted(state['streams'])} are not this run's tasks "
                             f"{sorted(self.streams)}")
        self.sampler.load_state_dict(state["sampler"])
        for name, s in state["streams"].items():
            self.streams[name].load_state_dict(s)
