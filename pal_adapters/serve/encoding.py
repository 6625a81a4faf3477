"""One request's rows for one task -> ``Piece``s: padded model inputs plus what ``describe`` needs.

Encoding is each task's kind's own ``encode_for_predict`` (the code ``pal-adapters predict``
runs), so a piece's context is exactly the one ``predict`` would build for the same rows. The
length rule: a row longer than the task's token limit is refused with 413 naming it, unless the
request (or the settings) asks for truncation, which is what ``predict`` does. Extractive QA has
no such limit: a long context becomes several windows, all in the same piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..tasks.rows import runs
from .errors import ServeError, bad_input
from .payload import Row


@dataclass(frozen=True)
class Piece:
    """Rows of one request for one task, encoded together.

    ``inputs``: ``(n, T)`` tensors (n = ``rows``: QA windows count one each); ``positions``: where
    each of the piece's input rows sits in the request (``describe`` gives one prediction per input
    row, in that order).
    """

    task: str
    kind: Any
    inputs: dict[str, Tensor]
    context: Any
    positions: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def token_limit(task_config: Any, encoder_limit: int | None) -> int:
    """The task's own ``max_length``, never above what the encoder's positions allow."""
    limit = task_config.max_length
    return min(limit, encoder_limit) if encoder_limit else limit


def check_rows(task: str, kind: Any, rows: Sequence[Row], where: str = "inputs") -> None:
    """422 naming the first row ``task`` cannot read."""
    for i, row in enumerate(rows):
        problem = kind.input_problem(row)
        if problem is not None:
            raise bad_input(f"{where}[{i}]", f"task {task!r} cannot read this input: {problem}")


def encode_request(task: str, kind: Any, rows: Sequence[Row], tokenizer: Any, limit: int,
                   truncate: bool) -> list[Piece]:
    """Rows of one request -> one piece per run of rows with the same fields (as ``predict`` batches)."""
    check_rows(task, kind, rows)
    pieces = []
    for positions in runs(rows):
        chunk = [rows[i] for i in positions]
        pieces.append(_encode(task, kind, chunk, positions, tokenizer, limit, truncate))
    return pieces


def _encode(task: str, kind: Any, rows: list[Row], positions: tuple[int, ...], tokenizer: Any, limit: int,
            truncate: bool) -> Piece:
    windowed = kind.windows_long_inputs or truncate
    try:  # limit + 1 tokens: a row that reaches it is over the limit (and was otherwise not cut)
        inputs, context = kind.encode_for_predict(rows, tokenizer, limit if windowed else limit + 1)
    except (KeyError, ValueError) as err:
        raise bad_input("inputs", f"task {task!r} cannot read these inputs: {err}") from None
    if not windowed:
        lengths = inputs["attention_mask"].sum(-1).tolist()
        over = [i for i, n in enumerate(lengths) if n > limit]
        if over:
            i = over[0]
            raise ServeError(413, f"inputs[{positions[i]}]: more than {limit} tokens, the limit of task {task!r}; "
                             "send a shorter text or \"truncate\": true", field=f"inputs[{positions[i]}]")
    return Piece(task, kind, dict(inputs), context, positions)

