"""Checks of what a forward is given, so bad input gets an error that names it, never a guess.

Cheap by design: shapes, two config fields, one ``aminmax`` over ``input_ids`` (about 6 us at
8 x 128 on a CPU; on an accelerator, reading its result waits for the device), and Python over
``task_ids``. Inside ``torch.compile`` the vocabulary check is left out (it would break the graph).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn
from torch.compiler import is_dynamo_compiling


def _batch_tensor(inputs: dict[str, Any]) -> tuple[str, torch.Tensor]:
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(inputs.get(key), torch.Tensor):
            return key, inputs[key]
    raise ValueError("forward needs input_ids or inputs_embeds (a tensor)")


class InputLimits:
    """What an encoder accepts: its vocabulary size and, with a learned position table, the
    longest sequence (``position_offset`` is None for relative or rotary positions: no limit).

    The two numbers are cached (a transformers config attribute costs microseconds) and re-read
    from the config before any error is raised, so ``resize_token_embeddings`` (which updates
    ``config.vocab_size``) never causes a false refusal.
    """

    def __init__(self, config: Any, position_offset: int | None):
        self.config = config  # the encoder's PretrainedConfig, the same object resizing updates
        self.position_offset = position_offset
        self.refresh()

    @classmethod
    def of(cls, backbone: nn.Module) -> InputLimits:
        embeddings = getattr(backbone, "embeddings", None)
        if not isinstance(getattr(embeddings, "position_embeddings", None), nn.Embedding):
            return cls(backbone.config, None)
        # RoBERTa-style embeddings number positions from padding_idx + 1 (roberta-base: 514 rows, 512 tokens).
        padding_idx = getattr(embeddings, "padding_idx", None)
        return cls(backbone.config, padding_idx + 1 if isinstance(padding_idx, int) else 0)

    def refresh(self) -> None:
        self.vocab_size = int(self.config.vocab_size)
        self.max_length = (None if self.position_offset is None
                           else int(self.config.max_position_embeddings) - self.position_offset)

    def check(self, inputs: dict[str, Any]) -> int:
        """Check ``input_ids`` ``(B, T)`` (or ``inputs_embeds`` ``(B, T, d_m)``); returns B."""
        key, x = _batch_tensor(inputs)
        dims = 2 if key == "input_ids" else 3
        if x.dim() != dims:
            raise ValueError(f"{key} must have {dims} dimensions (batch, seq_len{', hidden' if dims == 3 else ''}); "
                             f"got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"empty batch: {key} has shape {tuple(x.shape)}; pass at least one example of at "
                             "least one token")
        if "position_ids" not in inputs and self.max_length is not None and x.shape[1] > self.max_length:
            self.refresh()
            self._check_length(x.shape[1])
        # Compiled code cannot branch on data without a graph break, nor can an exported graph (ONNX,
        # torch.export): there the embedding's own error stands.
        if key == "input_ids" and not _capturing() and not _in_vocabulary(x, self.vocab_size):
            self.refresh()
            _check_vocabulary(x, self.vocab_size)
        return x.shape[0]

    def _check_length(self, length: int) -> None:
        limit = self.max_length
        if limit is not None and length > limit:
            raise ValueError(
                f"sequences of {length} tokens are longer than this encoder's position table allows ({limit} "
                f"tokens; config.max_position_embeddings={limit + self.position_offset}); truncate them, e.g. "
                f"tokenizer(..., truncation=True, max_length={limit})"
            )


def max_length(backbone: nn.Module) -> int | None:
    """The longest sequence ``backbone``'s learned position table covers; None without one."""
    return InputLimits.of(backbone).max_length


def _capturing() -> bool:
    return is_dynamo_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _in_vocabulary(ids: torch.Tensor, size: int) -> bool:
    if ids.is_floating_point() or ids.dtype == torch.bool:
        return False
    low, high = torch.aminmax(ids)
    return int(low) >= 0 and int(high) < size  # int(): cheaper than comparing 0-d tensors


def _check_vocabulary(ids: torch.Tensor, size: int) -> None:
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be integer token ids; got a {ids.dtype} tensor")
    if not _in_vocabulary(ids, size):
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
