"""Building what a run needs: the encoder and tokenizer, tokenized splits, optimizer, schedule."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

from ..model_path import resolve_model_path
from ..params import is_adapter_parameter
from .config import TrainConfig
from .data import make_dataloader, tokenize
from .readers import load_split
from .taskdefs import TaskDef


def load_backbone(name: str) -> tuple[nn.Module, Any]:
    """The bare encoder and its tokenizer; offline unless the user is online.

    The encoder's ``config.name_or_path`` is ``name`` as given (``"minilm"``, a hub id), not the
    folder it was read from: saved models record it, and must load on another machine too.
    """
    path = resolve_model_path(name)
    if Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(path)
    model.config.name_or_path = name
    return model, AutoTokenizer.from_pretrained(path)


@dataclass
class TaskData:
    """A task's tokenized splits (``train`` is None for eval-only tasks)."""

    definition: TaskDef
    train: datasets.Dataset | None
    dev: datasets.Dataset | None


def _cap(ds: datasets.Dataset, limit: int, seed: int, group: int = 1) -> datasets.Dataset:
    """At most ``limit`` examples, a seeded random subset (0 = all), in whole groups of ``group``
    consecutive rows (ranking: one query's candidates; at least one group)."""
    if not limit or len(ds) <= limit:
        return ds
    if group == 1:
        return ds.shuffle(seed=seed).select(range(limit)).flatten_indices()
    keep = torch.randperm(len(ds) // group, generator=torch.Generator().manual_seed(seed))[:max(1, limit // group)]
    return ds.select([u * group + i for u in keep.tolist() for i in range(group)]).flatten_indices()


def prepare_data(defs: dict[str, TaskDef], tokenizer: Any, config: TrainConfig,
                 cache_dir: str | None = None) -> dict[str, TaskData]:
    """Read and tokenize every task's train and dev splits (capped for quick runs)."""
    out = {}
    for name, d in defs.items():
        splits = {}
        for split, cap in (("train", config.max_train_examples), ("dev", config.max_eval_examples)):
            if getattr(d.data, split) is None:
                splits[split] = None
                continue
            raw = _cap(load_split(d, split), cap, config.seed, d.kind.group_size)
            splits[split] = tokenize(raw, tokenizer, d.task.max_length, cache_dir=cache_dir, kind=d.kind)
        out[name] = TaskData(d, splits["train"], splits["dev"])
    return out


def dev_loaders(data: dict[str, TaskData], tokenizer: Any, batch_size: int) -> dict[str, Any]:
    return {name: make_dataloader(td.dev, tokenizer, batch_size, shuffle=False, kind=td.definition.kind)
            for name, td in data.items() if td.dev is not None}


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


_PARTS = ("backbone", "adapter", "head")  # the order of the optimizer's groups


def _part(name: str, config: TrainConfig) -> str:
    """Which learning rate a trainable parameter gets (``TrainConfig.learning_rate``): heads join the
    adapters unless ``head_lr`` is set, so a run without it keeps the groups of earlier checkpoints."""
    if name.startswith("heads."):
        return "head" if config.head_lr is not None else "adapter"
    return "adapter" if is_adapter_parameter(name) or name.startswith("loss_weighting.") else "backbone"


def build_optimizer(model: nn.Module, extra: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW/Adamax; backbone at ``lr``, adapters and loss weights at ``adapter_lr``, heads at
    ``head_lr``; no decay on biases, norms and the uncertainty log-variances."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(f"loss_weighting.{n}", p) for n, p in extra.named_parameters()]
    for name, p in named:
        decay = not (_no_decay(name) or name.startswith("loss_weighting."))
        groups.setdefault((_part(name, config), decay), []).append(p)
    param_groups = [
        {"params": ps, "lr": config.learning_rate(part), "weight_decay": config.weight_decay if decay else 0.0}
        for (part, decay), ps in sorted(groups.items(), key=lambda item: (_PARTS.index(item[0][0]), item[0][1]))
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adamax
    return cls(param_groups)


def build_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
