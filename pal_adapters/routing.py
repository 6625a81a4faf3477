"""The router: which task's adapters act on which rows of the batch now.

The router owns the active routing; layers never receive a task through ``forward``. A routing is
a tuple of contiguous segments ``(task, start, stop)`` over the batch rows. One task for the whole
batch is the common case (a single segment covering everything); a mixed-task batch is sorted by
task by the multi-task model so that each task's rows form one segment, which lets every site
run each adapter once on a slice (a view) instead of gathering rows.

Per forward pass the router also holds what every site needs and no layer passes along: the
padding mask of the input (PALs attend over the same keys as the backbone) and, for encoders that
apply one layer module at several depths (ALBERT), a counter of layer calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

ALL_ROWS = -1  # a segment stop meaning "to the end of the batch"


@dataclass(frozen=True)
class Segment:
    task: str
    start: int
    stop: int  # ALL_ROWS: through the last row

    def rows(self) -> slice:
        return slice(self.start, None if self.stop == ALL_ROWS else self.stop)


@dataclass(frozen=True)
class Replication:
    """``predict_all``'s plan: inside layer ``depth``, repeat the batch of ``batch`` rows ``n`` times."""

    depth: int
    n: int
    batch: int

    def repeat(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Rows repeated ``n`` times along dim 0 when ``x`` still has the original batch size."""
        if x is None or x.shape[0] != self.batch:
            return x
        return x.repeat(self.n, *([1] * (x.dim() - 1)))


class Router:
    """Mutable routing state shared by all injection sites of one model."""

    def __init__(self) -> None:
        self.segments: tuple[Segment, ...] = ()
        self.replication: Replication | None = None
        self.keep: torch.Tensor | None = None  # (B, 1, 1, T) bool, True = a real token
        self.depth_counter = 0

    # ---- task routing ---------------------------------------------------------------------
    @property
    def active(self) -> str | tuple[str, ...] | None:
        """The task of a one-task routing, the tasks of a mixed one, or None (backbone runs bare)."""
        if not self.segments:
            return None
        if len(self.segments) == 1 and self.segments[0].stop == ALL_ROWS:
            return self.segments[0].task
        return tuple(s.task for s in self.segments)

    def set_task(self, task: str | None) -> None:
        """Route the whole batch to ``task`` (``None``: no adapters act)."""
        self.segments = () if task is None else (Segment(task, 0, ALL_ROWS),)

    @contextmanager
    def routed(self, segments: tuple[Segment, ...]) -> Iterator[None]:
        """Use ``segments`` inside the block and restore the previous routing after it."""
        previous = self.segments
        self.segments = segments
        try:
            yield
        finally:
            self.segments = previous

    def check_batch(self, batch_size: int) -> None:
        last = self.segments[-1].stop if self.segments else ALL_ROWS
        if last not in (ALL_ROWS, batch_size):
            raise ValueError(f"the routing covers {last} rows but the batch has {batch_size}")

    # ---- per-forward state ----------------------------------------------------------------
    def begin_forward(self, attention_mask: torch.Tensor | None) -> None:
        """Called when the encoder starts: remember the padding mask, reset the depth counter."""
        self.depth_counter = 0
        if attention_mask is None:
            self.keep = None
            return
        if attention_mask.dim() != 2:
            raise ValueError(
                f"pal_adapters needs the 2D padding mask (batch, seq_len); got attention_mask of shape "
                f"{tuple(attention_mask.shape)}"
            )
        self.keep = attention_mask.bool()[:, None, None, :]

    def next_depth(self) -> int:
        depth = self.depth_counter
        self.depth_counter += 1
        return depth
