"""Jobs and the bounded queue between the event loop (producers) and the model's worker thread.

Two kinds of job travel one FIFO: a ``PredictJob`` (pieces of one ``/predict`` request, which the
batcher merges with others into one forward) and a ``CallJob`` (a function of the model run alone
between batches: ``/predict_all``, loading or removing a task). Each job's answer goes back to
the event loop through an asyncio future, set with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .collate import padded_tokens
from .encoding import Piece
from .errors import ServeError


@dataclass(eq=False)
class Job:
    """What every job has: its future on ``loop``, and ``abandoned`` once its client stopped waiting."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    abandoned: bool = field(default=False, init=False)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Answer the job from any thread (a no-op if the client already gave up)."""
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


@dataclass(eq=False)
class PredictJob(Job):
    """One ``/predict`` request: its task, its pieces, and how many input rows it answers."""

    task: str = ""
    pieces: tuple[Piece, ...] = ()
    size: int = 0

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


@dataclass(eq=False)
class CallJob(Job):
    """``fn(model)`` run alone by the worker; its return value is the answer."""

    fn: Callable[[Any], Any] = lambda model: None


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by a timeout
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class JobQueue:
    """A FIFO of at most ``capacity`` jobs; ``take`` hands the worker the next batch."""

    def __init__(self, capacity: int, retry_after_s: int):
        self.capacity = capacity
        self.retry_after = str(retry_after_s)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        """Queue ``job``; 503 with ``Retry-After`` when full or draining."""
        with self._cond:
            if self.closed:
                raise ServeError(503, "the server is shutting down; send the request to another replica",
                                 headers={"Retry-After": self.retry_after})
            if len(self._jobs) >= self.capacity:
                raise ServeError(503, f"queue full ({self.capacity} requests waiting); retry later",
                                 headers={"Retry-After": self.retry_after})
            self._jobs.append(job)
            self._cond.notify()

    def close(self) -> None:
        """Accept nothing more; ``take`` returns what is queued, then None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def take(self, max_rows: int, max_tokens: int, max_wait_s: float, batching: bool = True) -> list[Job] | None:
        """The next batch: one ``CallJob``, or ``PredictJob``s that fit ``max_rows`` and ``max_tokens``,
        waiting up to ``max_wait_s`` after the first for more. None once closed and empty."""
        with self._cond:
            first = self._next_live(wait=True)
            if first is None:
                return None
            if isinstance(first, CallJob) or not batching:
                return [first]
            batch: list[PredictJob] = [first]
            deadline = time.monotonic() + max_wait_s
            while True:
                head = self._next_live(wait=False)
                if head is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        return batch
                    self._cond.wait(left)
                    continue
                if isinstance(head, CallJob) or not _fits(batch, head, max_rows, max_tokens):
                    return batch
                batch.append(self._jobs.popleft())

    def _next_live(self, wait: bool) -> Job | None:
        """The first job nobody abandoned: popped when ``wait`` (blocking until one comes or the
        queue closes), only peeked otherwise."""
        while True:
            while self._jobs and self._jobs[0].abandoned:
                self._jobs.popleft()
            if self._jobs:
                return self._jobs.popleft() if wait else self._jobs[0]
            if not wait or self.closed:
                return None
            self._cond.wait()


def _fits(batch: list[PredictJob], job: Job, max_rows: int, max_tokens: int) -> bool:
    pieces = [p for j in batch for p in j.pieces] + list(job.pieces)
    return sum(p.rows for p in pieces) <= max_rows and padded_tokens(pieces) <= max_tokens
