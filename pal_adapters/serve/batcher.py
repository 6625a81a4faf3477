"""The worker thread that owns the model: queue -> one mixed-task forward -> each request's answer.

Only this thread touches the model (forwards, ``load_task``, ``remove_task``), so a task loaded or
removed takes effect between batches and a batch always finishes on the model it started with.
The event loop only reads ``catalog``, a snapshot of the tasks swapped in after every change.

A batch: the pieces of every request taken (across tasks) are padded into one batch and run
through ONE ``model(..., task_ids=...)`` (``task=`` when a single task is in it); each piece's
logits go through its task's kind's ``describe``. If the forward raises, that batch's requests
get a 500 with an error id (logged with the traceback); if one request's post-processing
raises, only that request does. The next batch is served either way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from .collate import Batch, build_batch, split_logits
from .encoding import Piece
from .errors import ServeError
from .jobs import CallJob, Job, JobQueue, PredictJob
from .metrics import ServeMetrics
from .settings import ServeSettings

log = logging.getLogger("pal_adapters.serve")


@dataclass(frozen=True)
class TaskEntry:
    """What the event loop may read of a task: its config and kind (the objects the model holds)."""

    config: Any
    kind: Any


class Batcher:
    """Owns ``model`` on one thread; ``submit`` queues a job and awaits its answer."""

    def __init__(self, model: Any, tokenizer: Any, settings: ServeSettings, metrics: ServeMetrics):
        self.model, self.tokenizer, self.settings, self.metrics = model, tokenizer, settings, metrics
        self.queue = JobQueue(settings.max_queue, settings.retry_after_s)
        self.left_pad = getattr(tokenizer, "padding_side", "right") == "left"
        self.pad_values = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0,
                           "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
        self.device = next(model.parameters()).device
        self.catalog: Mapping[str, TaskEntry] = MappingProxyType({})
        self._refresh_catalog()
        self._thread = threading.Thread(target=self._run, name="pal-serve-model", daemon=True)

    # ---- event-loop side -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, serve the queued ones, then end the worker."""
        self.queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def worker_alive(self) -> bool:
        """The model's worker thread runs (also while draining): the liveness of ``/health``."""
        return self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """The worker runs and takes new jobs."""
        return self.worker_alive and not self.queue.closed

    async def predict(self, task: str, pieces: list[Piece], size: int, timeout: float) -> list[Any]:
        """The predictions of one request's ``size`` inputs, in order."""
        loop = asyncio.get_running_loop()
        job = PredictJob(loop, loop.create_future(), task=task, pieces=tuple(pieces), size=size)
        return await self._submit(job, timeout)

    async def call(self, fn: Callable[[Any], Any], timeout: float) -> Any:
        """``fn(model)`` on the worker, between batches."""
        loop = asyncio.get_running_loop()
        return await self._submit(CallJob(loop, loop.create_future(), fn=fn), timeout)

    async def _submit(self, job: Job, timeout: float) -> Any:
        self.queue.put(job)
        self.metrics.queue_depth.set(len(self.queue))
        try:
            return await asyncio.wait_for(job.future, timeout)
        except asyncio.TimeoutError:
            job.abandoned = True
            raise ServeError(504, f"not answered within {timeout:g} s (request_timeout_s); the server is "
                             "overloaded or the request is too large") from None

    # ---- worker side ---------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        while (jobs := self.queue.take(s.max_batch_size, s.max_batch_tokens, s.max_wait_ms / 1000,
                                       s.batching)) is not None:
            self.metrics.queue_depth.set(len(self.queue))
            if isinstance(jobs[0], CallJob):
                self._run_call(jobs[0])
            else:
                self._run_batch(jobs)

    def _run_call(self, job: CallJob) -> None:
        try:
            job.resolve(job.fn(self.model))
        except ServeError as err:
            job.resolve(error=err)
        except Exception as err:  # noqa: BLE001 (the worker must survive anything a job does)
            job.resolve(error=_internal(err, "a call"))
        finally:
            self._refresh_catalog()

    def _run_batch(self, jobs: list[PredictJob]) -> None:
        live = [j for j in jobs if self._still_served(j)]
        if not live:
            return
        try:
            batch = build_batch([p for j in live for p in j.pieces], self.model.task_names, self.pad_values,
                                self.left_pad)
            parts = dict(zip(map(id, batch.pieces), self._forward(batch), strict=True))
        except Exception as err:  # noqa: BLE001 (fail this batch's requests, keep serving)
            self.metrics.batch_failures.inc()
            error = _internal(err, f"a batch of {len(live)} requests")
            for job in live:
                job.resolve(error=error)
            return
        self.metrics.observe_batch(batch.inputs["input_ids"].shape[0], batch.tokens, len(live))
        for job in live:
            self._answer(job, parts)

    def _forward(self, batch: Batch) -> list[torch.Tensor]:
        """One forward for the whole batch -> each piece's logits (on CPU)."""
        inputs = {k: v.to(self.device) for k, v in batch.inputs.items()}
        tasks = set(batch.task_ids)
        with torch.no_grad():
            if len(tasks) == 1:
                logits = self.model(**inputs, task=batch.task_ids[0]).logits.cpu()
            else:
                out = self.model(**inputs, task_ids=batch.task_ids).logits
                logits = {t: v.cpu() for t, v in out.items()}
        return split_logits(batch, logits, self.left_pad)

    def _answer(self, job: PredictJob, parts: dict[int, torch.Tensor]) -> None:
        """Each piece's ``describe``, placed at its inputs' positions; failures stay in this job."""
        try:
            predictions: list[Any] = [None] * job.size
            for piece in job.pieces:
                for position, prediction in zip(piece.positions, piece.kind.describe(parts[id(piece)], piece.context),
                                                strict=True):
                    predictions[position] = prediction
            job.resolve(predictions)
        except Exception as err:  # noqa: BLE001
            job.resolve(error=_internal(err, f"post-processing a {job.task!r} request"))

    def _still_served(self, job: PredictJob) -> bool:
        """False (and a 404 answered) when the job's task was removed or replaced while it waited."""
        if job.abandoned:
            return False
        head = self.model.heads[job.task] if job.task in self.model.tasks else None
        if head is not None and all(p.kind is head.kind for p in job.pieces):
            return True
        job.resolve(error=ServeError(404, f"task: {job.task!r} was removed or replaced while the request waited; "
                                     f"this server's tasks: {self.model.task_names}", field="task"))
        return False

    def _refresh_catalog(self) -> None:
        self.catalog = MappingProxyType({n: TaskEntry(self.model.tasks[n], self.model.heads[n].kind)
                                         for n in self.model.task_names})
        self.metrics.tasks_loaded.set(len(self.catalog))


def _internal(err: Exception, what: str) -> ServeError:
    """A 500 carrying an error id; the traceback goes to the log under the same id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s while serving %s: %r", error_id, what, err, exc_info=err)
    return ServeError(500, f"internal error while serving {what} (error id {error_id}; see the server log)")
