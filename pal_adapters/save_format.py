"""What the JSON files of a save hold, read strictly, and the checks that tie a save's files together.

``pal_config.json`` (``ModelRecord``) and ``tasks/<name>/task.json`` (``TaskRecord``) list every
field: a missing or unknown field is an error, never today's default; every value's type and range
is checked (``config.from_fields`` with ``complete=True``). From format version 2 each file records
the sha256 of its own content (``content_sha256``: canonical JSON of the other fields), and
``pal_config.json`` the sha256 of every file of every task, so a file changed after saving, or a
task folder from another save, is refused by name. Version-1 files (written before these two
fields existed) load with every other check; saving again upgrades them. From version 3 a task
records its kind ``options``, ``max_length`` and ``inputs``; a version-1 or -2 task gets their
defaults, with a warning that names them (save again to record them).

Every problem raises ``AdapterLoadError`` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AdapterConfig, TaskConfig
from .io import AdapterLoadError, file_sha256, read_json
from .validation import from_fields

CONFIG_FILE, BACKBONE_FILE = "pal_config.json", "backbone.safetensors"
TASK_FILE, TASK_TENSORS = "task.json", "adapter.safetensors"
CONTENT_KEY = "content_sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
TASK_FIELDS_V3 = ("options", "max_length", "inputs")  # TaskConfig fields a version-3 save adds


@dataclass(frozen=True)
class BaseRecord:
    """The base model's fingerprint (``io.fingerprint``): identity, sizes and weights checksum."""

    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    name_or_path: str  # the name the user gave (``minilm``, a hub id) or a local path
    checksum: str


@dataclass(frozen=True)
class TaskRecord:
    """``tasks/<name>/task.json`` as stored."""

    format: str
    version: int
    name: str
    task: dict[str, Any]
    adapter: dict[str, Any]
    base: dict[str, Any]
    backbone_checksum: str
    sha256: dict[str, str]
    content_sha256: str | None  # None only in version-1 files


@dataclass(frozen=True)
class ModelRecord:
    """``pal_config.json`` as stored."""

    format: str
    version: int
    adapter: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    task_order: list[str]
    base: dict[str, Any]
    backbone_tuned: bool
    backbone_frozen: bool
    backbone_checksum: str
    sha256: dict[str, str]
    content_sha256: str | None


@dataclass(frozen=True)
class SavedTask:
    """A checked ``task.json``: ``task`` as defined (``adapter`` None: the model's), ``adapter`` as built."""

    folder: Path
    name: str
    task: TaskConfig
    adapter: AdapterConfig
    base: dict[str, Any]
    backbone_checksum: str
    tensors_sha256: str


@dataclass(frozen=True)
class SavedModel:
    """A checked ``pal_config.json``; ``tasks`` in ``task_order``."""

    directory: Path
    version: int
    adapter: AdapterConfig
    tasks: dict[str, TaskConfig]
    base: dict[str, Any]
    backbone_tuned: bool
    backbone_frozen: bool
    backbone_checksum: str
    sha256: dict[str, str]


# ---- writing -----------------------------------------------------------------------------------
def content_sha256(data: dict[str, Any]) -> str:
    """sha256 of ``data`` without its ``content_sha256``, as canonical JSON (sorted keys, no spaces)."""
    rest = {k: v for k, v in data.items() if k != CONTENT_KEY}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``content_sha256`` added (what is written)."""
    return {**data, CONTENT_KEY: content_sha256(data)}


def task_file_hashes(name: str, task_json_sha: str, tensors_sha: str) -> dict[str, str]:
    """The entries ``pal_config.json`` records for one task's files."""
    return {f"tasks/{name}/{TASK_FILE}": task_json_sha, f"tasks/{name}/{TASK_TENSORS}": tensors_sha}


# ---- reading one file --------------------------------------------------------------------------
def _record(path: Path, cls: type) -> tuple[Any, dict[str, Any]]:
    """``read_json`` + every field present, known and of its type; then the content hash."""
    data = read_json(path)
    if data["version"] == 1 and CONTENT_KEY not in data:
        data = {**data, CONTENT_KEY: None}
    record = _fields(path, cls, data, "top-level")
    if data["version"] >= 2 or record.content_sha256 is not None:  # a version edited down to 1 is still checked
        if record.content_sha256 is None or content_sha256(data) != record.content_sha256:
            raise AdapterLoadError(f"{path} was changed after it was saved (field {CONTENT_KEY} does not match "
                                   "its content): restore the saved file or save the model again")
    return record, data


def _fields(path: Path, cls: type, data: Any, what: str) -> Any:
    try:
        return from_fields(cls, data, what, complete=True)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:  # whatever __post_init__ raises
        raise AdapterLoadError(f"{path}: {err}") from err


def _task(path: Path, raw: Any, version: int, what: str) -> TaskConfig:
    """A saved task definition; before version 3 the fields of ``TASK_FIELDS_V3`` take their
    defaults, with a warning naming them (what ``predict`` of that save used before version 3)."""
    if version < 3 and isinstance(raw, dict):
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(TaskConfig) if f.name in TASK_FIELDS_V3}
        missing = {k: v for k, v in defaults.items() if k not in raw}
        if missing:
            task = _fields(path, TaskConfig, {**raw, **missing}, what)
            from .tasks import kind_of

            given = {k: dict(kind_of(task).options) if k == "options" else getattr(task, k) for k in missing}
            warnings.warn(f"{path} is a version-{version} save: {what} records no {sorted(missing)} and gets "
                          f"the defaults {given}; save it again to record them", stacklevel=3)
            return task
    return _fields(path, TaskConfig, raw, what)


def _sha(path: Path, field: str, value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise AdapterLoadError(f"{path}: field {field}={value!r} is not a sha256 (64 lowercase hex digits)")
    return value


def _base(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    base = _fields(path, BaseRecord, raw, "base")
    _sha(path, "base.checksum", base.checksum)
    for name, least in (("hidden_size", 1), ("num_layers", 1), ("vocab_size", 0)):
        if getattr(base, name) < least:
            raise AdapterLoadError(f"{path}: field base.{name}={getattr(base, name)} must be >= {least}")
    return dataclasses.asdict(base)


def _check_name(path: Path, field: str, name: Any) -> str:
    """A task name that is a plain folder name (no separators, not hidden, not too long)."""
    if (not isinstance(name, str) or not name or name.startswith(".") or len(name.encode()) > 255
            or any(c in name for c in "/\\\0")):
        raise AdapterLoadError(f"{path}: field {field}={name!r} is not a task name (a plain folder name)")
    return name


def read_task(folder: Path) -> SavedTask:
    """``folder/task.json``, every field checked."""
    path = Path(folder) / TASK_FILE
    record, _ = _record(path, TaskRecord)
    task = _task(path, record.task, record.version, "task")
    adapter = _fields(path, AdapterConfig, record.adapter, "adapter")
    if sorted(record.sha256) != [TASK_TENSORS]:
        raise AdapterLoadError(f"{path}: field sha256 lists {sorted(record.sha256)}; it records exactly "
                               f"['{TASK_TENSORS}']")
    return SavedTask(Path(folder), _check_name(path, "name", record.name), task, adapter, _base(path, record.base),
                     _sha(path, "backbone_checksum", record.backbone_checksum),
                     _sha(path, f"sha256.{TASK_TENSORS}", record.sha256[TASK_TENSORS]))


def read_model(directory: Path) -> SavedModel:
    """``directory/pal_config.json``, every field checked, and checked against itself."""
    path = Path(directory) / CONFIG_FILE
    record, data = _record(path, ModelRecord)
    adapter = _fields(path, AdapterConfig, record.adapter, "adapter")
    order = [_check_name(path, f"task_order[{i}]", n) for i, n in enumerate(record.task_order)]
    if len(set(order)) != len(order) or set(order) != set(record.tasks):
        raise AdapterLoadError(f"{path}: field task_order={order} does not list each task of field tasks "
                               f"{sorted(record.tasks)} once")
    tasks = {n: _task(path, record.tasks[n], record.version, f"tasks.{n}") for n in order}
    base = _base(path, record.base)
    checksum = _sha(path, "backbone_checksum", record.backbone_checksum)
    if record.backbone_tuned != (checksum != base["checksum"]):
        raise AdapterLoadError(
            f"{path}: field backbone_tuned={record.backbone_tuned} contradicts the checksums (backbone_checksum "
            f"{'differs from' if checksum != base['checksum'] else 'equals'} base.checksum)")
    expected = {BACKBONE_FILE} if record.backbone_tuned else set()
    if data["version"] >= 2:
        expected |= {k for n in order for k in task_file_hashes(n, "", "")}
    if set(record.sha256) != expected:
        raise AdapterLoadError(f"{path}: field sha256 lists {sorted(record.sha256)}; for these tasks and "
                               f"backbone_tuned={record.backbone_tuned} it records {sorted(expected)}")
    sha256 = {k: _sha(path, f"sha256[{k!r}]", v) for k, v in record.sha256.items()}
    return SavedModel(Path(directory), data["version"], adapter, tasks, base, record.backbone_tuned,
                      record.backbone_frozen, checksum, sha256)


# ---- a model's files against each other --------------------------------------------------------
def check_task_folders(model: SavedModel) -> None:
    """``tasks/`` holds one folder per task of ``task_order``, no more, no less."""
    root = model.directory / "tasks"
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    if sorted(model.tasks) != found:
        raise AdapterLoadError(f"{model.directory / CONFIG_FILE}: field task_order={list(model.tasks)} disagrees "
                               f"with the task folders in {root}: {found}")


def check_task_in_model(model: SavedModel, task: SavedTask) -> None:
    """A task folder belongs to this save: same name, definition, base, backbone weights and bytes."""
    path, name = task.folder / TASK_FILE, task.folder.name
    config = model.directory / CONFIG_FILE
    problems = []
    if task.name != name:
        problems.append(f"field name={task.name!r} but the folder is tasks/{name} (task folders swapped or renamed)")
    if task.task != model.tasks.get(name):
        problems.append(f"field task differs from {config.name}'s field tasks.{name}")
    if task.adapter != (model.tasks[name].adapter or model.adapter):
        problems.append(f"field adapter differs from the adapter {config.name} gives task {name!r}")
    if task.base != model.base:
        problems.append(f"field base (checksum {task.base['checksum'][:12]}) is another base model than "
                        f"{config.name}'s (checksum {model.base['checksum'][:12]})")
    if task.backbone_checksum != model.backbone_checksum:
        problems.append(f"field backbone_checksum says it was trained with other backbone weights than "
                        f"{config.name}'s ({'a tuned' if model.backbone_tuned else 'the frozen base'} backbone)")
    if problems:
        raise AdapterLoadError(f"{path} does not belong to the model in {model.directory}: " + "; ".join(problems))
    if model.version >= 2:
        recorded = task_file_hashes(name, file_sha256(path), task.tensors_sha256)
        changed = sorted(k for k, v in recorded.items() if model.sha256[k] != v)
        if changed:
            raise AdapterLoadError(f"{config}: field sha256 does not match {changed}: the task folder was changed "
                                   "or comes from another save")
