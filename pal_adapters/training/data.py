"""Batching task data: tokenize standard columns, group examples by length, pad dynamically.

``tokenize`` turns the standard columns of ``readers.py`` into features with the task kind's
``encode`` (``input_ids``/``attention_mask`` (/``token_type_ids``), ``labels``, ``length`` and the
kind's extra columns); ``LengthGroupedBatchSampler`` + ``DynamicPaddingCollator`` batch them with
little padding, keeping a kind's groups of rows (ranking: one query's candidates) together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, Sampler

from ..config import TaskConfig
from ..tasks import TaskKind, kind_of


def tokenize(ds: datasets.Dataset, tokenizer: Any, max_length: int,
             cache_dir: str | os.PathLike | None = None, kind: TaskKind | None = None) -> datasets.Dataset:
    """Encode standard columns with ``kind.encode`` (default: a classification task's: truncation
    to ``max_length``, no padding) in a batched ``map``; a kind may return more rows than it got.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes them),
    ``labels``, ``length`` and the kind's extra columns. The result's fingerprint hashes the data,
    the tokenizer's vocabulary and settings, ``max_length`` and the kind with its options; with
    ``cache_dir`` it is stored there and reused.
    """
    kind = kind or kind_of(TaskConfig())
    key = Hasher.hash([ds._fingerprint, _tokenizer_state(tokenizer), max_length, kind.name,
                       sorted(kind.options.items()), "tokenize-v2"])
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"tokenized-{key}.arrow")
    return ds.map(kind.encode, batched=True, remove_columns=ds.column_names, new_fingerprint=key,
                  cache_file_name=cache_file, fn_kwargs={"tokenizer": tokenizer, "max_length": max_length})


def _tokenizer_state(tokenizer: Any) -> Any:
    """What defines a tokenizer's output; its truncation/padding state changes when called, so drop it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [type(tokenizer).__name__, tokenizer]
    state = json.loads(backend.to_str())
    state.pop("truncation", None), state.pop("padding", None)
    return [type(tokenizer).__name__, state, tokenizer.truncation_side]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into mega-batches, sort each by length, split, shuffle.

    Every index appears exactly once per epoch (unless ``drop_last``). Epoch ``e`` uses seed
    ``seed + e``; the epoch advances after each iteration, or is set with ``set_epoch``. With
    ``shuffle=False`` the order is fixed: consecutive mega-batches, each sorted longest first.
    ``group_size`` consecutive rows form a unit that is never split (ranking: one query's
    candidates; its length is its longest row's); a batch then holds ``batch_size // group_size``
    units (at least one).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mega_batch_mult: int = 50,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, group_size: int = 1) -> None:
        if batch_size < 1 or mega_batch_mult < 1 or group_size < 1:
            raise ValueError(f"batch_size={batch_size}, mega_batch_mult={mega_batch_mult}, group_size={group_size} "
                             "must be >= 1")
        lengths = list(lengths)
        if len(lengths) % group_size:
            raise ValueError(f"{len(lengths)} rows do not form whole groups of group_size={group_size}")
        self.group_size = group_size
        self.lengths = [max(lengths[i:i + group_size]) for i in range(0, len(lengths), group_size)]
        self.batch_size, self.mega_batch_mult = max(1, batch_size // group_size), mega_batch_mult
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.group_size
        for units in self._unit_batches():
            yield [u * g + i for u in units for i in range(g)]

    def _unit_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        n = len(self.lengths)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        mega, b = self.batch_size * self.mega_batch_mult, self.batch_size
        batches = []
        for start in range(0, n, mega):  # sort within a mega-batch only, so batches stay random
            chunk = sorted(order[start:start + mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == b]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches


@dataclass
class DynamicPaddingCollator:
    """Pad tokenized rows to the batch's longest; labels are collated by the task's kind (token
    labels padded with -100; float stays float). With ``keep_extra`` the kind's extra columns
    (not model inputs, ``labels`` or ``length``) come along as Python lists, in row order."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None
    kind: TaskKind | None = None
    keep_extra: bool = False

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        names = self.tokenizer.model_input_names
        inputs = [{k: v for k, v in f.items() if k in names} for f in features]
        batch = dict(self.tokenizer.pad(inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                        return_tensors="pt"))
        if "labels" in features[0]:
            kind = self.kind or kind_of(TaskConfig())
            batch["labels"] = kind.collate_labels([f["labels"] for f in features], batch["input_ids"].shape[1])
        if self.keep_extra:
            for key in features[0]:
                if key not in names and key not in ("labels", "length"):
                    batch[key] = [f[key] for f in features]
        return batch


def make_dataloader(ds: datasets.Dataset, tokenizer: Any, batch_size: int, *, shuffle: bool = True,
                    seed: int = 0, mega_batch_mult: int = 50, num_workers: int = 0,
                    kind: TaskKind | None = None) -> DataLoader:
    """A ``DataLoader`` over a ``tokenize``d dataset with length-grouped batches (whole groups of
    ``kind.group_size`` rows) and dynamic padding; batches carry the kind's extra columns."""
    lengths = ds["length"] if "length" in ds.column_names else [len(x) for x in ds["input_ids"]]
    sampler = LengthGroupedBatchSampler(list(lengths), batch_size, mega_batch_mult=mega_batch_mult,
                                        shuffle=shuffle, seed=seed, group_size=kind.group_size if kind else 1)
    collator = DynamicPaddingCollator(tokenizer, kind=kind, keep_extra=True)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)
