"""Pieces of many requests and tasks -> ONE padded batch with ``task_ids``, and its logits -> pieces.

Each piece was padded to its own length T_i by its kind's ``encode_for_predict``; the batch pads
every piece to T = max T_i (on the tokenizer's padding side, with its pad token, mask 0 and token
type 0), so attention sees exactly the tokens ``predict`` would. Pieces are laid out grouped by
task (in task order, arrival order within a task), which is the order ``MultiTaskModel`` sorts a
mixed batch into: each task's logits are then consecutive pieces. Token-level logits
``(n, T, C)`` are cut back to the piece's own ``T_i`` columns, so ``describe`` gets the shape
``predict`` would give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .encoding import Piece


@dataclass(frozen=True)
class Batch:
    """One forward's inputs: ``inputs`` ``(B, T)`` tensors, ``task_ids`` one task name per row,
    ``pieces`` in batch order (each owns ``rows`` consecutive rows)."""

    inputs: dict[str, Tensor]
    task_ids: list[str]
    pieces: tuple[Piece, ...]

    @property
    def tokens(self) -> int:
        """Padded tokens of the forward: rows x longest row."""
        return int(self.inputs["input_ids"].numel())


def padded_tokens(pieces: Sequence[Piece]) -> int:
    """What a batch of ``pieces`` would cost in padded tokens (the ``max_batch_tokens`` budget)."""
    return sum(p.rows for p in pieces) * max(p.length for p in pieces) if pieces else 0


def build_batch(pieces: Sequence[Piece], task_order: Sequence[str], pad_values: dict[str, int],
                left: bool) -> Batch:
    """Pieces -> one batch, grouped by task in ``task_order`` (stable within a task)."""
    rank = {t: i for i, t in enumerate(task_order)}
    ordered = tuple(sorted(pieces, key=lambda p: rank[p.task]))
    length = max(p.length for p in ordered)
    keys = sorted({k for p in ordered for k in p.inputs})
    inputs = {k: torch.cat([_pad(p, k, length, pad_values.get(k, 0), left) for p in ordered]) for k in keys}
    task_ids = [p.task for p in ordered for _ in range(p.rows)]
    return Batch(inputs, task_ids, ordered)


def _pad(piece: Piece, key: str, length: int, value: int, left: bool) -> Tensor:
    """``piece.inputs[key]`` ``(n, T_i)`` -> ``(n, length)``; a key the piece lacks is all ``value``."""
    x = piece.inputs.get(key)
    if x is None:
        x = torch.full((piece.rows, piece.length), value, dtype=torch.long)
    extra = length - x.shape[1]
    if not extra:
        return x
    fill = torch.full((x.shape[0], extra), value, dtype=x.dtype)
    return torch.cat([fill, x] if left else [x, fill], dim=1)


def split_logits(batch: Batch, logits: Tensor | dict[str, Tensor], left: bool) -> list[Tensor]:
    """The forward's logits -> one tensor per piece (in ``batch.pieces`` order), cut to its length.

    ``logits``: a tensor for a one-task batch, else ``{task: logits of its rows, in batch order}``.
    """
    offsets: dict[str, int] = {}
    out = []
    for piece in batch.pieces:
        task_logits = logits if isinstance(logits, Tensor) else logits[piece.task]
        start = offsets.get(piece.task, 0)
        offsets[piece.task] = start + piece.rows
        part = task_logits[start:start + piece.rows]
        if piece.kind.token_level:  # (n, T, C): keep the piece's own columns
            t = part.shape[1]
            part = part[:, t - piece.length:] if left else part[:, :piece.length]
        out.append(part)
    return out
