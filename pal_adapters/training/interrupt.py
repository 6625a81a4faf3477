"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the step, checkpoint, exit 130.

While ``StopSignals`` is active, the first SIGINT or SIGTERM only sets ``requested``; the
training loop looks at it after each optimizer step, writes a checkpoint and raises
``TrainingInterrupted``. The first signal also puts the previous handlers back, so a second
Ctrl-C stops at once, as usual (the checkpoint being written is then discarded by the atomic
save, and the previous one is kept).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_STATUS = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


class TrainingInterrupted(SystemExit):
    """The run stopped on a signal after saving a checkpoint at ``step``.

    A ``SystemExit`` with status 130: a command-line run ends without a traceback; code that calls
    ``fit()`` may catch it (``except TrainingInterrupted as stop: stop.step``) and resume later.
    """

    def __init__(self, step: int, signal_name: str):
        super().__init__(EXIT_STATUS)
        self.step, self.signal_name = step, signal_name

    def __str__(self) -> str:
        return f"interrupted at step {self.step}; checkpoint saved; continue with --resume"


class StopSignals:
    """A context manager catching SIGINT/SIGTERM into ``requested`` (a no-op off the main thread,
    where Python cannot install signal handlers)."""

    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the signal received
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        self._restore()  # a second signal acts as it would without us

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
