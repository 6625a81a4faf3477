"""save_pretrained / from_pretrained for whole models, save_task / load_task for single tasks.

Loading reads and checks every file before anything changes: each JSON field, its type and range,
format version and content hash (``save_format.py``), the files of a save against each other,
the base-model fingerprint, each tensor file's sha256, and every tensor's name, shape and dtype
against modules built on the meta device (no memory, nothing attached). Only then are adapters
attached and weights copied, and a failure of any type after that point is rolled back: the
model, and a backbone passed to ``from_pretrained``, are left exactly as they were. Saves are
byte-deterministic: the same model gives the same bytes and recorded hashes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .adapters import TaskAdapter
from .adapters.common import fuse_legacy_qkv
from .config import TaskConfig
from .heads import TaskHead
from .io import (
    FORMAT,
    VERSION,
    AdapterLoadError,
    atomic_directory,
    backbone_state,
    check_fingerprint,
    check_state,
    copy_into,
    file_sha256,
    fingerprint,
    read_tensors,
    tensors_checksum,
    weights_checksum,
    write_json,
    write_tensors,
)
from .layouts import resolve_layout
from .rollback import backbone_restored_on_failure, task_removed_on_failure
from .save_format import (
    BACKBONE_FILE,
    CONFIG_FILE,
    TASK_FILE,
    TASK_TENSORS,
    SavedModel,
    SavedTask,
    check_task_folders,
    check_task_in_model,
    read_model,
    read_task,
    sealed,
    task_file_hashes,
)

if TYPE_CHECKING:
    from .model import MultiTaskModel

__all__ = ["BACKBONE_FILE", "CONFIG_FILE", "TASK_FILE", "TASK_TENSORS", "from_pretrained", "load_task",
           "load_weights", "save_pretrained", "save_task", "task_state"]
Tensors = dict[str, torch.Tensor]


def task_state(model: MultiTaskModel, name: str) -> Tensors:
    """``adapter.*`` and ``head.*`` tensors of one task."""
    state = {f"adapter.{k}": v for k, v in model.bank[name].state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.heads[name].state_dict().items()})
    return state


# ---- saving ------------------------------------------------------------------------------------
def _write_task(model: MultiTaskModel, name: str, folder: Path, backbone_checksum: str) -> dict[str, str]:
    """One task folder; returns the sha256 entries ``pal_config.json`` records for it."""
    folder.mkdir(parents=True, exist_ok=True)
    sha = write_tensors(folder / TASK_TENSORS, task_state(model, name))
    write_json(folder / TASK_FILE, sealed({
        "format": FORMAT, "version": VERSION, "name": name,
        "task": model.tasks[name].to_dict(), "adapter": model.bank[name].config.to_dict(),
        "base": model.base_fingerprint, "backbone_checksum": backbone_checksum, "sha256": {TASK_TENSORS: sha},
    }))
    return task_file_hashes(name, file_sha256(folder / TASK_FILE), sha)


def save_task(model: MultiTaskModel, directory: str | Path, name: str) -> Path:
    """Write one task (adapter + head + definition) to ``directory``, atomically."""
    model.check_task(name)
    checksum = weights_checksum(model.backbone)
    atomic_directory(Path(directory), lambda tmp: _write_task(model, name, tmp, checksum))
    return Path(directory)


def save_pretrained(model: MultiTaskModel, directory: str | Path) -> Path:
    """Write the whole model: config, each task's folder, and the backbone if it was tuned."""
    checksum = weights_checksum(model.backbone)
    tuned = checksum != model.base_fingerprint["checksum"]

    def fill(tmp: Path) -> None:
        files = {}
        if tuned:
            files[BACKBONE_FILE] = write_tensors(tmp / BACKBONE_FILE, backbone_state(model.backbone))
        for name in model.task_names:
            files.update(_write_task(model, name, tmp / "tasks" / name, checksum))
        write_json(tmp / CONFIG_FILE, sealed({
            "format": FORMAT, "version": VERSION, "adapter": model.adapter_config.to_dict(),
            "tasks": {n: t.to_dict() for n, t in model.tasks.items()}, "task_order": model.task_names,
            "base": model.base_fingerprint, "backbone_tuned": tuned, "backbone_frozen": model.backbone_frozen,
            "backbone_checksum": checksum, "sha256": files,
        }))

    atomic_directory(Path(directory), fill)
    return Path(directory)


# ---- checks against a model, before anything changes ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Target:
    """What the checks need to know of the model a save goes into (read without changing it)."""

    d_model: int
    num_depths: int
    dtype: torch.dtype

    @classmethod
    def of(cls, base: nn.Module, num_depths: int) -> _Target:
        ref = next((p for p in base.parameters() if p.is_floating_point()), None)
        return cls(int(base.config.hidden_size), num_depths, ref.dtype if ref is not None else torch.float32)


def _expected_task_state(saved: SavedTask, target: _Target) -> Tensors:
    """Names, shapes and dtypes the task's modules will have, built on the meta device (no memory),
    so a config that would build huge or unbuildable modules is refused before any is built."""
    try:
        with torch.device("meta"):
            adapter = TaskAdapter(saved.adapter, target.d_model, target.num_depths)
            head = TaskHead(saved.task, target.d_model)
        state = {f"adapter.{k}": v for k, v in adapter.state_dict().items()}
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    except Exception as err:  # any failure to build from checked fields: this task does not fit this model
        raise AdapterLoadError(f"{saved.folder / TASK_FILE}: fields task and adapter do not build a task on "
                               f"this model: {err}") from err
    return {k: v.to(target.dtype) if v.is_floating_point() else v for k, v in state.items()}


def _task_tensors(saved: SavedTask) -> Tensors:
    """A task's tensors; PAL attentions saved before Q/K/V were fused get the one ``qkv`` name."""
    return fuse_legacy_qkv(read_tensors(saved.folder / TASK_TENSORS, saved.tensors_sha256))


def _checked_tensors(saved: SavedTask, target: _Target) -> Tensors:
    tensors = _task_tensors(saved)
    check_state(saved.folder / TASK_TENSORS, _expected_task_state(saved, target), tensors)
    return tensors


def _built_task(saved: SavedTask) -> TaskConfig:
    """The task definition with the adapter config it was built with."""
    return dataclasses.replace(saved.task, adapter=saved.adapter)


# ---- load_task -----------------------------------------------------------------------------------
def load_task(model: MultiTaskModel, path: str | Path, name: str | None = None, check_weights: bool = True) -> str:
    """Add the task saved in ``path`` to ``model`` (as ``name``, default its saved name)."""
    folder = Path(path)
    saved = read_task(folder)
    check_fingerprint(saved.base, model.base_fingerprint, folder / TASK_FILE, check_weights=False)
    if check_weights and saved.backbone_checksum != weights_checksum(model.backbone):
        raise AdapterLoadError(
            f"{folder / TASK_FILE} was trained with other backbone weights than this model's (the backbone was "
            "tuned, or is another checkpoint); pass check_weights=False to load it anyway")
    name = saved.name if name is None else name
    if name in model.tasks:
        raise AdapterLoadError(f"task {name!r} already exists in this model; remove_task({name!r}) or pass name=")
    tensors = _checked_tensors(saved, _Target.of(model.backbone, model.bank.num_depths))
    with task_removed_on_failure(model, name):
        _add_task(model, name, _built_task(saved), folder / TASK_FILE)
        _copy_task(model, name, tensors)
    return name


def _add_task(model: MultiTaskModel, name: str, task: TaskConfig, where: Path) -> None:
    try:
        model.add_task(name, task)
    except ValueError as err:  # e.g. pooling="pooler" on an encoder without a pooler, or a bad name=
        raise AdapterLoadError(f"{where}: task {name!r} cannot be added to this model: {err}") from err


def _copy_task(model: MultiTaskModel, name: str, tensors: Tensors) -> None:
    copy_into(model.bank[name], {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
    copy_into(model.heads[name], {k[5:]: v for k, v in tensors.items() if k.startswith("head.")})


# ---- from_pretrained / load_weights --------------------------------------------------------------
def _read_model(directory: Path) -> tuple[SavedModel, dict[str, SavedTask], Tensors | None]:
    """Every file of a saved model, read and checked against the others (not yet against a model)."""
    saved = read_model(directory)
    check_task_folders(saved)
    tasks = {}
    for name in saved.tasks:
        tasks[name] = read_task(directory / "tasks" / name)
        check_task_in_model(saved, tasks[name])
    backbone_tensors = None
    if saved.backbone_tuned:
        path = directory / BACKBONE_FILE
        backbone_tensors = read_tensors(path, saved.sha256[BACKBONE_FILE])
        if tensors_checksum(backbone_tensors) != saved.backbone_checksum:
            raise AdapterLoadError(f"{path} holds other weights than {CONFIG_FILE}'s field backbone_checksum says")
    return saved, tasks, backbone_tensors


def verify_saved(path: str | Path) -> None:
    """Every check a load makes that needs no backbone: file formats and fields, content hashes, each
    tensor file's recorded sha256, readable tensors. Raises ``AdapterLoadError`` naming the first
    failure; returns None when a model folder (or a task folder) is intact."""
    folder = Path(path)
    tasks = _read_model(folder)[1] if (folder / CONFIG_FILE).is_file() else {folder.name: read_task(folder)}
    for saved in tasks.values():
        _task_tensors(saved)


def from_pretrained(directory: str | Path, backbone: nn.Module | None = None,
                    check_weights: bool = True) -> MultiTaskModel:
    """Rebuild a saved model on ``backbone`` (the base model it was made from).

    Without ``backbone`` the base is loaded with ``AutoModel.from_pretrained`` from the name
    recorded at save time. Everything is checked before ``backbone`` is touched; any failure
    after that leaves it exactly as it was given (modules, hooks, weights, ``requires_grad``).
    """
    directory = Path(directory)
    saved, tasks, backbone_tensors = _read_model(directory)
    if backbone is None:
        backbone = _load_base(saved.base, directory)
    base, resolved = resolve_layout(backbone)
    check_fingerprint(saved.base, fingerprint(base, resolved.num_depths), directory / CONFIG_FILE, check_weights)
    target = _Target.of(base, resolved.num_depths)
    task_tensors = {name: _checked_tensors(t, target) for name, t in tasks.items()}
    if backbone_tensors is not None:
        check_state(directory / BACKBONE_FILE, backbone_state(base), backbone_tensors)
    with backbone_restored_on_failure(backbone, snapshot=backbone_tensors is not None):
        model = _build(saved, tasks, task_tensors, backbone, backbone_tensors)
    return model


def _build(saved: SavedModel, tasks: dict[str, SavedTask], task_tensors: dict[str, Tensors], backbone: nn.Module,
           backbone_tensors: Tensors | None) -> MultiTaskModel:
    from .model import MultiTaskModel

    model = MultiTaskModel(backbone, {}, adapter=saved.adapter, freeze_backbone=saved.backbone_frozen,
                           base_fingerprint=saved.base)
    for name, t in tasks.items():
        _add_task(model, name, t.task, t.folder / TASK_FILE)  # as defined: adapter None = the model's
        _copy_task(model, name, task_tensors[name])
    if backbone_tensors is not None:
        copy_into(model.backbone, backbone_tensors)
    return model


def load_weights(model: MultiTaskModel, directory: str | Path) -> None:
    """Copy a saved model's weights into ``model``, which must have the same tasks (resuming)."""
    directory = Path(directory)
    saved, tasks, backbone_tensors = _read_model(directory)
    if list(tasks) != model.task_names:
        raise AdapterLoadError(f"{directory / CONFIG_FILE} holds tasks {list(tasks)}, this model {model.task_names}")
    check_fingerprint(saved.base, model.base_fingerprint, directory / CONFIG_FILE, check_weights=True)
    task_tensors = {n: _task_tensors(t) for n, t in tasks.items()}
    for name, tensors in task_tensors.items():
        check_state(tasks[name].folder / TASK_TENSORS, task_state(model, name), tensors)
    if backbone_tensors is not None:
        check_state(directory / BACKBONE_FILE, backbone_state(model.backbone), backbone_tensors)
        copy_into(model.backbone, backbone_tensors)
    for name, tensors in task_tensors.items():
        _copy_task(model, name, tensors)


def _load_base(base: dict[str, Any], where: Path) -> nn.Module:
    """The base model by its recorded name (``minilm`` is the packaged MiniLM; else a hub id or path)."""
    from transformers import AutoModel

    from .model_path import resolve_model_path

    name = base["name_or_path"]
    if not name:
        raise AdapterLoadError(f"{where / CONFIG_FILE} records no base model name; pass backbone=")
    try:
        return AutoModel.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError, ImportError) as err:  # not there (offline, another machine's path), not a model
        raise AdapterLoadError(f"{where / CONFIG_FILE}: the base model of field base.name_or_path={name!r} cannot "
                               f"be loaded here ({err}); pass backbone=") from err
