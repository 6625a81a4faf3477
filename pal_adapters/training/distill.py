"""Knowledge distillation from teacher ensembles (MT-DNN-KD, Liu et al. 2019, arXiv 1904.09482).

For a task with K teachers the soft target is the mean of their class probabilities,
Q(c|x) = (1/K)·Σ_k P_k(c|x), and the student minimises −Σ_c Q(c|x)·log P(c|x) (regression: MSE
to the teachers' mean prediction), optionally mixed with the gold-label loss as
alpha·KD + (1 − alpha)·CE. Tasks without teachers train on gold labels as usual.

A teacher is either a saved pal_adapters model (a folder written by ``save_pretrained``), run on
every batch, or a probability file computed once with ``write_teacher_probabilities``: safetensors
holding one tensor ``"probabilities"`` of shape (N, C) (regression: (N,) predictions) whose row i
belongs to training example i, looked up with the batch's ``example_index``. Nothing is unpickled.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TaskConfig
from ..io import AdapterLoadError, read_tensors, write_tensors
from ..model import BATCH_KEYS, MultiTaskModel, as_task_config, inference
from ..tasks import TaskKind, kind_of
from .losses import mixed_loss, soft_targets

PROBABILITIES = "probabilities"  # the one tensor name in a probability file
PathLike = str | os.PathLike


@dataclass(frozen=True)
class DistillConfig:
    """Where each task's teachers are, and how much the soft targets weigh.

    Attributes:
        teachers: task -> folders of saved pal_adapters models that have this task.
        probabilities: task -> probability files (see the module docstring), rows in training-set order.
        alpha: weight of the KD loss: 1.0 trains on soft targets only, otherwise
            alpha·KD + (1 − alpha)·gold-label loss.
    A task's K teachers are all its folders and files together; a single path may be given bare.
    """

    teachers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    probabilities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha!r} must be a number in [0, 1] (1 = soft targets only)")
        object.__setattr__(self, "teachers", _checked_paths("teachers", self.teachers, "folder"))
        object.__setattr__(self, "probabilities", _checked_paths("probabilities", self.probabilities, "file"))

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks with at least one teacher, in order of first mention."""
        named = [t for sources in (self.teachers, self.probabilities) for t, paths in sources.items() if paths]
        return tuple(dict.fromkeys(named))


def _checked_paths(name: str, sources: Mapping[str, Any], kind: str) -> Mapping[str, tuple[str, ...]]:
    """``sources`` as an immutable task -> tuple of paths, each checked to be an existing ``kind``."""
    if not isinstance(sources, Mapping):
        raise TypeError(f"{name} must map task names to tuples of paths, got {type(sources).__name__}")
    exists = Path.is_dir if kind == "folder" else Path.is_file
    checked: dict[str, tuple[str, ...]] = {}
    for task, paths in sources.items():
        paths = (paths,) if isinstance(paths, (str, os.PathLike)) else tuple(paths)
        for path in paths:
            if not exists(Path(path)):
                raise FileNotFoundError(f"{name}[{task!r}]: {kind} {path} does not exist")
        checked[task] = tuple(str(p) for p in paths)
    return MappingProxyType(checked)


# ---- probability files --------------------------------------------------------------------------
def save_probabilities(path: PathLike, probs: Tensor) -> Path:
    """Write ``(N, C)`` probabilities (regression: ``(N,)``) as float32, atomically (temp + os.replace)."""
    if probs.dim() not in (1, 2) or probs.shape[0] == 0:
        raise ValueError(f"probabilities of shape {tuple(probs.shape)}: expected (N, C) or (N,) with N >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write_tensors(Path(tmp), {PROBABILITIES: probs.detach().float()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_probabilities(path: PathLike, num_examples: int | None, num_labels: int | None) -> Tensor:
    """Read a probability file: ``(N, num_labels)`` probabilities, or ``(N,)`` predictions when
    ``num_labels`` is None (regression; ``(N, 1)`` is accepted). ``num_examples``: the training-set
    size N (None skips that check). Raises ``AdapterLoadError`` naming the file."""
    path = Path(path)
    tensors = read_tensors(path, None)  # missing or unreadable files raise AdapterLoadError here
    if set(tensors) != {PROBABILITIES}:
        raise AdapterLoadError(f"{path} must hold exactly one tensor {PROBABILITIES!r}; found {sorted(tensors)}")
    probs = tensors[PROBABILITIES].float()
    if num_labels is None and probs.dim() == 2 and probs.shape[1] == 1:
        probs = probs.squeeze(1)
    row = () if num_labels is None else (num_labels,)
    if probs.dim() != 1 + len(row) or tuple(probs.shape[1:]) != row:
        want = "(N,) regression predictions" if num_labels is None else f"(N, {num_labels}) probabilities"
        raise AdapterLoadError(f"{path} holds a tensor of shape {tuple(probs.shape)}; this task needs {want}")
    if num_examples is not None and probs.shape[0] != num_examples:
        raise AdapterLoadError(f"{path} has {probs.shape[0]} rows but the task's training set has {num_examples} "
                               "examples (row i must be training example i)")
    _check_values(path, probs, num_labels is None)
    return probs


def _check_values(path: Path, probs: Tensor, regression: bool) -> None:
    if not torch.isfinite(probs).all():
        raise AdapterLoadError(f"{path} holds NaN or infinite values")
    if not regression and ((probs < 0).any() or not torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-3)):
        raise AdapterLoadError(f"{path}: rows are not probability distributions (>= 0, summing to 1); "
                               "were logits saved instead of softmax probabilities?")


# ---- teacher outputs ----------------------------------------------------------------------------
def teacher_output(model: MultiTaskModel, task: str, batch: Mapping[str, Any]) -> Tensor:
    """``model``'s float32 output for a one-task batch: ``(B, C)`` softmax probabilities, or
    ``(B,)`` predictions for regression, on the batch's device. Keys other than model inputs
    (``labels``, ``length``, ...) are ignored. Call under ``torch.no_grad()``."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in BATCH_KEYS and v is not None}
    logits = model(**inputs, task=task).logits.float()
    return model.heads[task].kind.teacher_targets(logits).to(_device(batch, None))


def write_teacher_probabilities(model: MultiTaskModel, task: str, batches: Iterable[Mapping[str, Any]],
                                path: PathLike) -> Path:
    """Run a trained ``model`` over ``task``'s training batches and save its outputs to ``path``.

    Row i of the file belongs to training example i: batches that carry ``example_index`` (as
    the training streams' batches do) may come in any order; batches without it must cover the
    training set in order. Dropout is off while it runs; the model's mode is restored afterwards.
    """
    model.check_task(task)
    model.heads[task].kind.check_distillable()
    outputs, indices = [], []
    with inference(model):
        for batch in batches:
            outputs.append(teacher_output(model, task, batch).cpu())
            if "example_index" in batch:
                indices.append(torch.as_tensor(batch["example_index"]).cpu())
    if not outputs:
        raise ValueError(f"batches for task {task!r} is empty; nothing to write to {path}")
    rows = torch.cat(outputs)
    if indices:
        if len(indices) != len(outputs):
            raise ValueError("some batches carry example_index and some do not; give it in all or none")
        order = torch.cat(indices)
        if not torch.equal(torch.sort(order).values, torch.arange(len(order))):
            raise ValueError(f"example_index of the batches must cover 0..{len(order) - 1} exactly once")
        rows = rows[torch.argsort(order)]
    return save_probabilities(path, rows)


class TeacherEnsemble(nn.Module):
    """The frozen teachers of every task in a ``DistillConfig``; ``targets`` gives soft targets Q.

    Args:
        config: where the teachers are.
        backbone_factory: builds a fresh base model (the one the teachers were trained on) per
            teacher folder; each folder is loaded once, even when it serves several tasks.
        tasks: the student's task definitions (e.g. ``student.tasks``); they fix each task's type
            and label count, which every teacher must match.
        num_examples: task -> training-set size, checked against the probability files' rows.
    Teachers stay in eval mode with ``requires_grad=False``; move them with ``.to(device)``.
    """

    def __init__(self, config: DistillConfig, backbone_factory: Callable[[], nn.Module],
                 tasks: Mapping[str, TaskConfig | Mapping[str, Any] | int | str],
                 num_examples: Mapping[str, int] | None = None):
        super().__init__()
        self.config = config
        self.task_configs = {name: as_task_config(spec) for name, spec in tasks.items()}
        for task in config.tasks:
            self._check_student_task(task)
        self.models = nn.ModuleList()
        self._model_teachers: dict[str, list[int]] = {}
        self._load_models(backbone_factory)
        sizes = num_examples or {}
        self._probabilities = {
            task: [load_probabilities(p, sizes.get(task), _width(self.task_configs[task])) for p in paths]
            for task, paths in config.probabilities.items() if paths}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TeacherEnsemble:
        """Teachers always stay in eval mode (no dropout), whatever ``mode`` is asked for."""
        return super().train(False)

    def _check_student_task(self, task: str) -> None:
        if task not in self.task_configs:
            raise ValueError(f"DistillConfig has teachers for task {task!r}, which the student lacks; "
                             f"student tasks: {list(self.task_configs)}")
        try:
            kind_of(self.task_configs[task]).check_distillable()
        except ValueError as err:
            raise ValueError(f"task {task!r}: {err}") from None

    def _load_models(self, backbone_factory: Callable[[], nn.Module]) -> None:
        index_of: dict[str, int] = {}
        backbones: list[nn.Module] = []
        for task, paths in self.config.teachers.items():
            for path in paths:
                if path not in index_of:
                    backbone = backbone_factory()
                    if any(backbone is b for b in backbones):
                        raise ValueError("backbone_factory returned the same backbone twice; it must build "
                                         "a new one for each teacher (adapters are injected into it)")
                    backbones.append(backbone)
                    index_of[path] = len(self.models)
                    self.models.append(MultiTaskModel.from_pretrained(path, backbone=backbone))
                self._check_teacher(path, self.models[index_of[path]], task)
                self._model_teachers.setdefault(task, []).append(index_of[path])

    def _check_teacher(self, path: str, teacher: MultiTaskModel, task: str) -> None:
        if task not in teacher.tasks:
            raise ValueError(f"teacher {path} has no task {task!r}; its tasks: {teacher.task_names}")
        mine, student = teacher.tasks[task], self.task_configs[task]
        if (mine.type, mine.num_labels) != (student.type, student.num_labels):
            raise ValueError(f"teacher {path}: task {task!r} is {mine.type} with {mine.num_labels} labels, "
                             f"but the student's is {student.type} with {student.num_labels}")

    @torch.no_grad()
    def targets(self, task: str, batch: Mapping[str, Tensor], example_index: Tensor | None = None) -> Tensor | None:
        """Soft targets for a one-task batch, or None when ``task`` has no teachers.

        ``batch``: model inputs (``input_ids`` ``(B, T)``, ``attention_mask``, ...; other keys are
        ignored). ``example_index``: ``(B,)`` training-set rows of the batch's examples, needed when
        the task has probability files. Returns Q ``(B, C)``, the mean of the K teachers'
        probabilities (regression: ``(B,)``, their mean prediction), float32.
        """
        if task not in self.config.tasks:
            return None
        outputs = [teacher_output(self.models[i], task, batch) for i in self._model_teachers.get(task, [])]
        if task in self._probabilities:
            device = outputs[0].device if outputs else _device(batch, example_index)
            outputs += self._file_rows(task, example_index, device)
        return soft_targets(outputs)

    def _file_rows(self, task: str, example_index: Tensor | None, device: torch.device) -> list[Tensor]:
        """Rows ``example_index`` of each of ``task``'s probability files, ``(B, C)`` or ``(B,)`` each."""
        if example_index is None:
            raise ValueError(f"task {task!r} has probability files; pass example_index, the batch's "
                             "rows in the training set")
        index = torch.as_tensor(example_index).long().flatten().cpu()
        rows = []
        for path, probs in zip(self.config.probabilities[task], self._probabilities[task], strict=True):
            if index.numel() and (index.min() < 0 or index.max() >= probs.shape[0]):
                raise IndexError(f"example_index holds {sorted(set(index.tolist()))} but {path} has rows "
                                 f"0..{probs.shape[0] - 1}")
            rows.append(probs.index_select(0, index).to(device))
        return rows


def _width(task: TaskConfig) -> int | None:
    """Row shape of a probability file: C for class probabilities, None for scalars (regression)."""
    return kind_of(task).target_width


def _device(batch: Mapping[str, Any], example_index: Tensor | None) -> torch.device:
    found = [v for v in (*batch.values(), example_index) if isinstance(v, Tensor)]
    return found[0].device if found else torch.device("cpu")


def distill_task_loss(kind: TaskKind, student_logits: Tensor, targets: Tensor, gold_loss: Tensor | None,
                      alpha: float = 1.0) -> Tensor:
    """The student's loss on a task with teachers, a scalar ``()``.

    ``kind.distillation_loss(student_logits, targets)`` (classification: −Σ_c Q(c|x)·log P(c|x)
    averaged over rows; regression: MSE to Q), mixed as alpha·KD + (1 − alpha)·``gold_loss``, the
    loss the task head already computed on the gold labels (not needed when ``alpha = 1``).
    Shapes: logits and targets ``(B, C)`` (regression: ``(B,)``).
    """
    kind.check_distillable()
    return mixed_loss(kind.distillation_loss(student_logits, targets), gold_loss, alpha)
