"""save_pretrained / from_pretrained for whole models, save_task / load_task for single tasks.

Loading checks everything (format, base-model fingerprint, file hashes, tensor names and shapes)
before a single weight is copied: a failed load leaves the model as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .config import AdapterConfig, TaskConfig
from .inject import remove_adapters
from .io import (
    FORMAT,
    VERSION,
    AdapterLoadError,
    atomic_directory,
    backbone_state,
    check_fingerprint,
    check_state,
    copy_into,
    read_json,
    read_tensors,
    weights_checksum,
    write_json,
    write_tensors,
)

if TYPE_CHECKING:
    from .model import MultiTaskModel

CONFIG_FILE, BACKBONE_FILE = "pal_config.json", "backbone.safetensors"
TASK_FILE, TASK_TENSORS = "task.json", "adapter.safetensors"


def task_state(model: MultiTaskModel, name: str) -> dict[str, Any]:
    """``adapter.*`` and ``head.*`` tensors of one task."""
    state = {f"adapter.{k}": v for k, v in model.bank[name].state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.heads[name].state_dict().items()})
    return state


def _write_task(model: MultiTaskModel, name: str, folder: Path, backbone_checksum: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sha = write_tensors(folder / TASK_TENSORS, task_state(model, name))
    write_json(folder / TASK_FILE, {
        "format": FORMAT, "version": VERSION, "name": name,
        "task": model.tasks[name].to_dict(), "adapter": model.bank[name].config.to_dict(),
        "base": model.base_fingerprint, "backbone_checksum": backbone_checksum, "sha256": {TASK_TENSORS: sha},
    })


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
            _write_task(model, name, tmp / "tasks" / name, checksum)
        write_json(tmp / CONFIG_FILE, {
            "format": FORMAT, "version": VERSION, "adapter": model.adapter_config.to_dict(),
            "tasks": {n: t.to_dict() for n, t in model.tasks.items()}, "task_order": model.task_names,
            "base": model.base_fingerprint, "backbone_tuned": tuned, "backbone_frozen": model.backbone_frozen,
            "backbone_checksum": checksum, "sha256": files,
        })

    atomic_directory(Path(directory), fill)
    return Path(directory)


def _read_task(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = read_json(folder / TASK_FILE)
    tensors = read_tensors(folder / TASK_TENSORS, meta.get("sha256", {}).get(TASK_TENSORS))
    return meta, tensors


def _task_config(meta: dict[str, Any], where: Path) -> TaskConfig:
    try:
        task = TaskConfig.from_dict(meta["task"])
        return TaskConfig.from_dict({**task.to_dict(), "adapter": AdapterConfig.from_dict(meta["adapter"])})
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"{where} has an invalid task definition: {err}") from err


def _saved_task(meta: dict[str, Any], name: str, where: Path) -> TaskConfig:
    try:
        return TaskConfig.from_dict(meta["tasks"][name])
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"{where} has an invalid definition of task {name!r}: {err}") from err


def load_task(model: MultiTaskModel, path: str | Path, name: str | None = None, check_weights: bool = True) -> str:
    """Add the task saved in ``path`` to ``model`` (as ``name``, default its saved name)."""
    folder = Path(path)
    meta, tensors = _read_task(folder)
    check_fingerprint(meta["base"], model.base_fingerprint, folder / TASK_FILE, check_weights=False)
    if check_weights and meta.get("backbone_checksum") != weights_checksum(model.backbone):
        raise AdapterLoadError(
            f"{folder / TASK_FILE} was trained with other backbone weights than this model's (the backbone was "
            "tuned, or is another checkpoint); pass check_weights=False to load it anyway")
    name = name or meta["name"]
    if name in model.tasks:
        raise AdapterLoadError(f"task {name!r} already exists in this model; remove_task({name!r}) or pass name=")
    model.add_task(name, _task_config(meta, folder / TASK_FILE))
    try:
        check_state(folder / TASK_TENSORS, task_state(model, name), tensors)
    except AdapterLoadError:
        model.remove_task(name)
        raise
    copy_into(model.bank[name], {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
    copy_into(model.heads[name], {k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    return name


def _read_model(directory: Path) -> tuple[dict[str, Any], dict[str, tuple], dict[str, Any] | None]:
    """Everything a saved model holds, read and hash-checked: config, tasks, backbone tensors."""
    meta = read_json(directory / CONFIG_FILE)
    tasks = {n: _read_task(directory / "tasks" / n) for n in meta["task_order"]}
    backbone_tensors = None
    if meta["backbone_tuned"]:
        backbone_tensors = read_tensors(directory / BACKBONE_FILE, meta["sha256"].get(BACKBONE_FILE))
    return meta, tasks, backbone_tensors


def _check_and_copy(model: MultiTaskModel, directory: Path, tasks: dict[str, tuple],
                    backbone_tensors: dict[str, Any] | None) -> None:
    """Check every tensor file against ``model``, then copy them all (nothing before all pass)."""
    for name, (_, tensors) in tasks.items():
        check_state(directory / "tasks" / name / TASK_TENSORS, task_state(model, name), tensors)
    if backbone_tensors is not None:
        check_state(directory / BACKBONE_FILE, backbone_state(model.backbone), backbone_tensors)
    if backbone_tensors is not None:
        copy_into(model.backbone, backbone_tensors)
    for name, (_, tensors) in tasks.items():
        copy_into(model.bank[name], {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
        copy_into(model.heads[name], {k[5:]: v for k, v in tensors.items() if k.startswith("head.")})


def from_pretrained(directory: str | Path, backbone: nn.Module | None = None,
                    check_weights: bool = True) -> MultiTaskModel:
    """Rebuild a saved model on ``backbone`` (the base model it was made from).

    Without ``backbone`` the base is loaded with ``AutoModel.from_pretrained`` from the name or
    path recorded at save time.
    """
    from .model import MultiTaskModel

    directory = Path(directory)
    meta, tasks, backbone_tensors = _read_model(directory)
    if backbone is None:
        backbone = _load_base(meta["base"], directory)
    model = MultiTaskModel(backbone, {}, adapter=AdapterConfig.from_dict(meta["adapter"]),
                           freeze_backbone=meta.get("backbone_frozen", True))
    try:
        check_fingerprint(meta["base"], model.base_fingerprint, directory / CONFIG_FILE, check_weights)
        for name in tasks:
            model.add_task(name, _saved_task(meta, name, directory / CONFIG_FILE))
        _check_and_copy(model, directory, tasks, backbone_tensors)
    except AdapterLoadError:
        remove_adapters(model.backbone)  # leave the caller's backbone as it was given
        raise
    model.base_fingerprint = meta["base"]
    return model


def load_weights(model: MultiTaskModel, directory: str | Path) -> None:
    """Copy a saved model's weights into ``model``, which must have the same tasks (resuming)."""
    directory = Path(directory)
    meta, tasks, backbone_tensors = _read_model(directory)
    if list(tasks) != model.task_names:
        raise AdapterLoadError(f"{directory / CONFIG_FILE} holds tasks {list(tasks)}, this model {model.task_names}")
    check_fingerprint(meta["base"], model.base_fingerprint, directory / CONFIG_FILE, check_weights=True)
    _check_and_copy(model, directory, tasks, backbone_tensors)


def _load_base(base: dict[str, Any], where: Path) -> nn.Module:
    from transformers import AutoModel

    source = base.get("name_or_path")
    if not source:
        raise AdapterLoadError(f"{where / CONFIG_FILE} records no base model name; pass backbone=")
    return AutoModel.from_pretrained(source)
