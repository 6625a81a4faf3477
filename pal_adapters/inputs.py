"""Checks of what a forward is given, so bad input gets an error that names it, never a guess.

Cheap by design: shapes, one ``aminmax`` over ``input_ids`` (a few microseconds at 8 x 128 on a
CPU; on an accelerator reading the result waits for the device), and Python over ``task_ids``.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn


def _batch_tensor(inputs: dict[str, Any]) -> tuple[str, torch.Tensor]:
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(inputs.get(key), torch.Tensor):
            return key, inputs[key]
    raise ValueError("forward needs input_ids or inputs_embeds (a tensor)")


def check_inputs(backbone: nn.Module, inputs: dict[str, Any]) -> int:
    """Check ``input_ids`` ``(B, T)`` (or ``inputs_embeds`` ``(B, T, d_m)``) against the encoder;
    returns the batch size B."""
    key, x = _batch_tensor(inputs)
    dims = 2 if key == "input_ids" else 3
    if x.dim() != dims:
        raise ValueError(f"{key} must have {dims} dimensions (batch, seq_len{', hidden' if dims == 3 else ''}); "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"empty batch: {key} has shape {tuple(x.shape)}; pass at least one example of at least "
                         "one token")
    if "position_ids" not in inputs:
        _check_length(backbone, x.shape[1])
    if key == "input_ids":
        _check_vocabulary(backbone, x)
    return x.shape[0]


def max_length(backbone: nn.Module) -> int | None:
    """The longest sequence the encoder's learned position table covers; None without a table
    (relative or rotary positions). RoBERTa-style embeddings number positions from
    ``padding_idx + 1``, so their table (514 rows for roberta-base) holds ``padding_idx + 1`` fewer."""
    embeddings = getattr(backbone, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    offset = padding_idx + 1 if isinstance(padding_idx, int) else 0
    return table.num_embeddings - offset


def _check_length(backbone: nn.Module, length: int) -> None:
    limit = max_length(backbone)
    if limit is not None and length > limit:
        raise ValueError(
            f"sequences of {length} tokens are longer than this encoder's position table allows ({limit} tokens; "
            f"config.max_position_embeddings={getattr(backbone.config, 'max_position_embeddings', '?')}); "
            f"truncate them, e.g. tokenizer(..., truncation=True, max_length={limit})"
        )


def _check_vocabulary(backbone: nn.Module, ids: torch.Tensor) -> None:
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be integer token ids; got a {ids.dtype} tensor")
    size = backbone.get_input_embeddings().num_embeddings
    low, high = torch.aminmax(ids)
    if low < 0 or high >= size:
        bad = ids[(ids < 0) | (ids >= size)].unique()
        raise ValueError(f"input_ids hold token ids outside the vocabulary 0..{size - 1}: {bad[:8].tolist()}; "
                         "is the tokenizer the one this model was built with?")


def task_index(task_ids: Any, task_names: list[str], batch_size: int) -> torch.Tensor:
    """``(B,)`` long tensor of indices into ``task_names``, from one name or integer index per example."""
    if isinstance(task_ids, str):
        raise TypeError(f"task_ids={task_ids!r} is one string; pass one task name per example (a list), "
                        f"or task={task_ids!r} for the whole batch")
    if isinstance(task_ids, torch.Tensor):
        if task_ids.is_floating_point() or task_ids.is_complex() or task_ids.dtype == torch.bool:
            raise TypeError(f"task_ids must hold integer task indices (or be a list of task names); "
                            f"got a {task_ids.dtype} tensor")
        ids = task_ids.long().flatten()
    else:
        try:
            entries = list(task_ids)
        except TypeError:
            raise TypeError(f"task_ids must be a list or tensor with one task per example; got {task_ids!r}") from None
        ids = torch.tensor([_index_of(t, i, task_names) for i, t in enumerate(entries)], dtype=torch.long)
    if ids.numel() != batch_size:
        raise ValueError(f"task_ids has {ids.numel()} entries but the batch has {batch_size} examples")
    if ids.numel() and (ids.min() < 0 or ids.max() >= len(task_names)):
        raise ValueError(f"task_ids must lie in 0..{len(task_names) - 1} (tasks: {task_names}); "
                         f"got {sorted(set(ids.tolist()))}")
    return ids


def _index_of(t: Any, position: int, task_names: list[str]) -> int:
    if isinstance(t, str):
        if t not in task_names:
            raise KeyError(f"unknown task {t!r}; this model's tasks: {task_names}")
        return task_names.index(t)
    if not isinstance(t, bool):
        try:
            return operator.index(t)  # ints, numpy ints, integer 0-d tensors; never a float
        except TypeError:
            pass
    raise TypeError(f"task_ids[{position}]={t!r}: expected a task name or an integer index into {task_names}")
