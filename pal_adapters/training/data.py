"""Batching task data: tokenize standard columns, group examples by length, pad dynamically.

``tokenize`` turns the standard columns of ``readers.py`` into ``input_ids``/``attention_mask``
(/``token_type_ids``), ``labels`` and ``length``; ``LengthGroupedBatchSampler`` +
``DynamicPaddingCollator`` batch them with little padding.
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

from .readers import Columns


def tokenize(ds: datasets.Dataset, tokenizer: Any, max_length: int,
             cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Tokenize standard columns (truncation to ``max_length``, no padding) with a batched ``map``.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes them),
    ``labels`` and ``length``. The result's fingerprint hashes the data, the tokenizer's vocabulary
    and settings and ``max_length``; with ``cache_dir`` it is stored there and reused.
    """
    key = Hasher.hash([ds._fingerprint, _tokenizer_state(tokenizer), max_length, "tokenize-v1"])
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"tokenized-{key}.arrow")
    return ds.map(_encode, batched=True, remove_columns=ds.column_names, new_fingerprint=key,
                  cache_file_name=cache_file, fn_kwargs={"tokenizer": tokenizer, "max_length": max_length})


def _tokenizer_state(tokenizer: Any) -> Any:
    """What defines a tokenizer's output; its truncation/padding state changes when called, so drop it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [type(tokenizer).__name__, tokenizer]
    state = json.loads(backend.to_str())
    state.pop("truncation", None), state.pop("padding", None)
    return [type(tokenizer).__name__, state, tokenizer.truncation_side]


def _encode(batch: Columns, tokenizer: Any, max_length: int) -> Columns:
    texts = [batch["text_a"]] + ([batch["text_b"]] if "text_b" in batch else [])
    enc = dict(tokenizer(*texts, truncation=True, max_length=max_length))
    return enc | {"labels": batch["label"], "length": [len(ids) for ids in enc["input_ids"]]}


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into mega-batches, sort each by length, split, shuffle.

    Every index appears exactly once per epoch (unless ``drop_last``). Epoch ``e`` uses seed
    ``seed + e``; the epoch advances after each iteration, or is set with ``set_epoch``. With
    ``shuffle=False`` the order is fixed: consecutive mega-batches, each sorted longest first.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, mega_batch_mult: int = 50,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"batch_size={batch_size}, mega_batch_mult={mega_batch_mult} must be >= 1")
        self.lengths, self.batch_size, self.mega_batch_mult = list(lengths), batch_size, mega_batch_mult
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[list[int]]:
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
        yield from batches


@dataclass
class DynamicPaddingCollator:
    """Pad tokenized examples to the batch's longest; keep model inputs and ``labels`` (float stays float)."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        names = self.tokenizer.model_input_names
        inputs = [{k: v for k, v in f.items() if k in names} for f in features]
        batch = dict(self.tokenizer.pad(inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of,
                                        return_tensors="pt"))
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            batch["labels"] = torch.stack(labels) if torch.is_tensor(labels[0]) else torch.tensor(labels)
        return batch


def make_dataloader(ds: datasets.Dataset, tokenizer: Any, batch_size: int, *, shuffle: bool = True,
                    seed: int = 0, mega_batch_mult: int = 50, num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over a ``tokenize``d dataset with length-grouped batches and dynamic padding."""
    lengths = ds["length"] if "length" in ds.column_names else [len(x) for x in ds["input_ids"]]
    sampler = LengthGroupedBatchSampler(list(lengths), batch_size, mega_batch_mult=mega_batch_mult,
                                        shuffle=shuffle, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=DynamicPaddingCollator(tokenizer),
                      num_workers=num_workers)
