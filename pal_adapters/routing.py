"""The router: which task's adapters act on which rows of the batch, private to each call.

A ``Routing`` is a tuple of contiguous segments ``(task, start, stop)`` over the batch rows, plus
``predict_all``'s replication plan. One task for the whole batch is the common case (a single
segment covering everything); a mixed-task batch is sorted by task by the multi-task model so that
each task's rows form one segment, which lets every site run each adapter once on a slice (a view)
instead of gathering rows. A ``Routing`` is immutable, so contexts that copy it share nothing.

Where a call finds its routing, first match wins:
1. the context's routing, a ``contextvars.ContextVar`` set by ``forward(task=...)``,
   ``forward(task_ids=...)``, ``predict_all`` and ``use_task`` for the duration of the call or
   block. It is local to the thread or asyncio task (asyncio tasks and ``asyncio.to_thread``
   start with a copy of their creator's context; a plain ``threading.Thread`` starts empty);
2. the routing a DataParallel replica was made with (see ``AdapterBank``), since DataParallel
   runs replicas on threads that do not see the caller's context;
3. the model-wide default set by ``set_task``, shared by every thread.

Each encoder forward then gets a ``ForwardState`` of its own (in a second ContextVar, set by the
encoder's pre-hook and reset by its post-hook): the routing, the padding mask (PALs attend over
the same keys as the backbone), a depth counter for encoders that apply one layer module at
several depths (ALBERT), and each layer's input. Nothing a forward writes is shared with another.

Under ``torch.compile`` Dynamo cannot trace a ContextVar (each access would break the graph at
every hook), so while Dynamo traces, the state passes between hooks through plain attributes
of the router instead: Dynamo resolves them at trace time into the graph it builds (guarded on
the routing's values) and leaves nothing behind at run time. Where the traced code did not set
them (a ``use_task`` outside the compiled code, layers compiled one by one), the compiled code
reads the ContextVar, at the cost of a graph break, and so still sees its own context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.compiler import is_dynamo_compiling

if TYPE_CHECKING:
    from .replicate import Replication

ALL_ROWS = -1  # a segment stop meaning "to the end of the batch"


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` run ``task``'s adapters; ``task=None``: no adapter acts on them (PEFT's
    ``adapter_names`` entry ``"__base__"``)."""

    task: str | None
    start: int
    stop: int  # ALL_ROWS: through the last row

    def rows(self) -> slice:
        return slice(self.start, None if self.stop == ALL_ROWS else self.stop)


@dataclass(frozen=True)
class Routing:
    """The segments of one call and, for ``predict_all``, where the batch is replicated."""

    segments: tuple[Segment, ...] = ()
    replication: Replication | None = None

    @classmethod
    def one_task(cls, task: str | None) -> Routing:
        """Every row to ``task``'s adapters; ``None``: no adapters act (the bare backbone)."""
        return BARE if task is None else cls((Segment(task, 0, ALL_ROWS),))

    @property
    def active(self) -> str | tuple[str, ...] | None:
        """The task of a one-task routing, the tasks of a mixed one, or None (backbone runs bare)."""
        if not self.segments:
            return None
        if len(self.segments) == 1 and self.segments[0].stop == ALL_ROWS:
            return self.segments[0].task
        return tuple(s.task for s in self.segments)

    def check_batch(self, batch_size: int) -> None:
        last = self.segments[-1].stop if self.segments else ALL_ROWS
        if last not in (ALL_ROWS, batch_size):
            raise ValueError(f"the routing covers {last} rows but the batch has {batch_size}")


BARE = Routing()


class ForwardState:
    """What one encoder forward reads and writes, private to it (its scratch).

    ``keep``: ``(B, 1, 1, T)`` bool padding mask, True = a real token; ``inputs``: the input
    ``(B, T, d_m)`` of each layer site, by site index; ``depths``: the depth each site of a shared
    layer module (ALBERT) is computing now.
    """

    __slots__ = ("bank", "routing", "keep", "depth_counter", "inputs", "depths", "encoder", "token")

    def __init__(self, bank, routing: Routing, keep: torch.Tensor | None, encoder=None):
        self.bank = bank  # the AdapterBank whose adapters act (a DataParallel replica's own)
        self.routing = routing
        self.keep = keep
        self.depth_counter = 0
        self.inputs: dict[int, torch.Tensor] = {}
        self.depths: dict[int, int] = {}
        self.encoder = encoder  # the module whose forward opened this state
        self.token: Token | None = None

    def next_depth(self) -> int:
        depth = self.depth_counter
        self.depth_counter += 1
        return depth


def padding_keep(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, T)`` padding mask -> ``(B, 1, 1, T)`` bool, the shape attention broadcasts over."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"pal_adapters needs the 2D padding mask (batch, seq_len); got attention_mask of shape "
            f"{tuple(attention_mask.shape)}"
        )
    b, t = attention_mask.shape
    return attention_mask.bool().reshape(b, 1, 1, t)  # two aten ops per forward (indexing with None: three)


class Router:
    """Where the calls of one model find their routing (see the module docstring for the order)."""

    def __init__(self) -> None:
        self.default: Routing = BARE  # set_task: model-wide, every thread sees it
        self._context: ContextVar[Routing | None] = ContextVar(f"pal_adapters_routing_{id(self):x}", default=None)
        self._forward: ContextVar[ForwardState | None] = ContextVar(f"pal_adapters_forward_{id(self):x}",
                                                                    default=None)
        # Read and written only while Dynamo traces (see the module docstring).
        self._traced_routing: Routing | None = None
        self._traced_state: ForwardState | None = None

    # A ContextVar can be neither copied nor pickled: a copied or unpickled model gets its own.
    def __getstate__(self) -> dict:
        return {"default": self.default}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.default = state["default"]

    def __deepcopy__(self, memo: dict) -> Router:
        router = Router()
        router.default = self.default
        return router

    # ---- task routing ---------------------------------------------------------------------
    def context_routing(self) -> Routing | None:
        """The routing this context chose (``use_task``, a forward in progress), or None."""
        if is_dynamo_compiling() and self._traced_routing is not None:
            return self._traced_routing
        return self._context.get()

    def current(self) -> Routing:
        routing = self.context_routing()
        return self.default if routing is None else routing

    @property
    def active(self) -> str | tuple[str, ...] | None:
        """The active task(s) that a call from this context would use without choosing its own."""
        return self.current().active

    def set_default(self, routing: Routing) -> None:
        """Make ``routing`` the model-wide default, for every thread (``AdapterBank.set_task``)."""
        self.default = routing

    @contextmanager
    def routed(self, routing: Routing) -> Iterator[None]:
        """Use ``routing`` for calls from this context inside the block only."""
        with self._swapped("_traced_routing", self._context, routing):
            yield

    # ---- per-forward state ----------------------------------------------------------------
    def forward_state(self) -> ForwardState | None:
        """The state of the encoder forward running in this context, or None."""
        if is_dynamo_compiling() and self._traced_state is not None:
            return self._traced_state
        return self._forward.get()  # also when only a layer is compiled: its encoder ran eagerly

    def open_forward(self, state: ForwardState) -> None:
        if is_dynamo_compiling():
            self._traced_state = state
        else:
            state.token = self._forward.set(state)

    def close_forward(self, encoder) -> None:
        if is_dynamo_compiling():
            self._traced_state = None
            return
        state = self._forward.get()
        if state is not None and state.encoder is encoder and state.token is not None:
            self._forward.reset(state.token)
            state.token = None

    @contextmanager
    def replaying(self, state: ForwardState) -> Iterator[None]:
        """Make ``state`` this context's forward inside the block (a checkpointed layer's recompute)."""
        with self._swapped("_traced_state", self._forward, state):
            yield

    @contextmanager
    def _swapped(self, traced: str, var: ContextVar, value) -> Iterator[None]:
        """Set ``var`` to ``value`` inside the block; while Dynamo traces, the attribute ``traced``
        instead (see the module docstring: a ContextVar would break the graph)."""
        if is_dynamo_compiling():
            previous = getattr(self, traced)
            setattr(self, traced, value)
            try:
                yield
            finally:
                setattr(self, traced, previous)
            return
        token = var.set(value)
        try:
            yield
        finally:
            var.reset(token)
