"""Task definitions: what a task is, where its data lives and how it is scored (MT-DNN's task_def.yml).

Owns ``TaskDef`` (a task's config — head, kind options, length, input form, all saved with the
model — plus its data source, metrics and label map, cross-checked) and ``load_task_defs``, which
reads and validates the YAML (or dict) form below. The ``data:`` mapping itself is a ``DataSource``,
owned by ``sources.py``.

A YAML file (or an equivalent dict) holds one flat mapping per task::

    data_dir: ../../shared/data/glue   # optional; base of relative data paths (default: the YAML's folder)
    max_length: 128                    # optional; default of every task's max_length
    tasks:
      rte:
        type: classification           # TaskConfig fields: type num_labels labels dropout pooling adapter
                                       #   options max_length inputs (saved with the model)
        num_labels: 2
        labels: [entailment, not_entailment]   # index = class id; gives label_map by default
        label_map: {entailment: 0, not_entailment: 1}   # optional: raw label string -> class id
        metrics: [accuracy]            # optional: default GLUE's official metrics, else the kind's defaults
        options: {}                    # optional: the kind's options (e.g. QA doc_stride), TaskKind.options
        max_length: 128                # optional
        data: {kind: glue_tsv, glue_task: rte}   # see sources.DataSource

Relative paths in a file are resolved against the file's folder; ``load_task_defs(path, data_dir=...)``
overrides ``data_dir`` (resolved against the working directory).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import TaskConfig
from ..tasks import TaskKind, get_kind, kind_of
from ..tasks.classification import ClassificationKind
from ..tasks.regression import RegressionKind
from .metrics import GLUE_TASK_METRICS
from .sources import FILE_KINDS, DataSource, GlueLayout


@dataclass(frozen=True)
class TaskDef:
    """One task: its config (saved with the model), data, metrics and label mapping.

    The task's kind options, maximum length and input form are fields of ``task`` (``TaskConfig``),
    so what is saved is what training used. ``task.inputs`` is set from the data's text columns
    (one: ``"text"``, two: ``"pair"``) when the definition does not give it.
    ``label_map`` maps raw label strings to class ids. It defaults to ``task.labels`` (index = id),
    then to the GLUE layout's hub label order; numeric labels ("0", "1", 2) need no entry.
    ``metrics`` default to a GLUE task's official ones, else to the kind's ``default_metrics``.
    ``kind`` is the task's kind object.
    """

    name: str
    task: TaskConfig
    data: DataSource
    metrics: tuple[str, ...] = ()
    label_map: dict[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        layout = self.data.glue_layout
        object.__setattr__(self, "task", _with_inputs(self.task, self.data))
        metrics = tuple(self.metrics) or GLUE_TASK_METRICS.get(self.data.glue_task or "", ())
        metrics = metrics or self.kind.default_metrics
        object.__setattr__(self, "metrics", metrics)
        _check_metrics(self.kind, metrics)
        if layout is not None:
            _check_glue_fit(self.task, layout)
        label_map = dict(self.label_map)
        if not label_map and self.kind.uses_label_names:
            names = self.task.labels or (layout.labels if layout else ())
            label_map = {name: i for i, name in enumerate(names)}
        object.__setattr__(self, "label_map", label_map)
        self._check_label_map()

    def _check_label_map(self) -> None:
        if self.label_map and not self.kind.uses_label_names:
            raise ValueError(f"label_map={self.label_map!r} is not used by type={self.task.type!r} "
                             "(its labels are not class names)")
        valid = range(self.task.num_labels)
        bad = {k: v for k, v in self.label_map.items()
               if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool) or v not in valid}
        if bad:
            raise ValueError(f"label_map entries {bad!r} are invalid; keys must be strings and values "
                             f"class ids in 0..{self.task.num_labels - 1}")

    @property
    def kind(self) -> TaskKind:
        """The task's kind, with the task's ``options`` (a new, stateless object each time: not
        stored, so the fields are all of a definition and ``TaskDef(**vars(d))`` rebuilds it)."""
        return kind_of(self.task)

    @property
    def eval_only(self) -> bool:
        """True when the task has no training split (evaluate it, do not train on it)."""
        return self.data.train is None

    def to_dict(self) -> dict[str, Any]:
        """The flat YAML form of this task (``load_task_defs({"tasks": {name: d}})`` rebuilds it)."""
        d = {k: v for k, v in self.task.to_dict().items() if v is not None}
        data = dataclasses.asdict(self.data) | {"text_columns": list(self.data.text_columns)}
        if self.data.kind == "glue_tsv":  # implied by glue_task
            del data["text_columns"], data["label_column"]
        d.update(metrics=list(self.metrics), label_map=dict(self.label_map), data=data)
        if not d.get("options"):
            d.pop("options", None)
        return d


def _with_inputs(task: TaskConfig, data: DataSource) -> TaskConfig:
    """``task`` with ``inputs`` read from the data's text columns, unless the kind fixes it (QA,
    NER); a definition's own ``inputs`` must agree with its data."""
    if len(get_kind(task.type).input_forms) == 1 or not data.text_columns:
        return task
    found = "pair" if len(data.text_columns) == 2 else "text"
    if task.inputs not in (None, found):
        raise ValueError(f"inputs={task.inputs!r} disagrees with the data's text columns "
                         f"{list(data.text_columns)}, which make inputs={found!r}")
    return dataclasses.replace(task, inputs=found)


def _check_metrics(kind: TaskKind, metrics: tuple[str, ...]) -> None:
    if not metrics:
        raise ValueError(f"metrics=[] is empty; choose from {sorted(kind.metrics)}")
    for name in metrics:
        if name not in kind.metrics:
            raise ValueError(f"metric={name!r} does not fit type={kind.name!r}; choose from "
                             f"{sorted(kind.metrics)}")


def _check_glue_fit(task: TaskConfig, layout: GlueLayout) -> None:
    expected = RegressionKind.name if not layout.labels else ClassificationKind.name
    if task.type != expected or (layout.labels and task.num_labels != len(layout.labels)):
        need = f"num_labels={len(layout.labels)}" if layout.labels else "num_labels=1"
        raise ValueError(f"type={task.type!r}, num_labels={task.num_labels} does not fit GLUE "
                         f"{layout.dir_name}, which needs type={expected!r}, {need}")


TOP_LEVEL_FIELDS = ("tasks", "data_dir", "max_length")
TASKDEF_FIELDS = ("metrics", "data", "label_map")
TASKCONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TaskConfig))


def load_task_defs(source: str | os.PathLike | Mapping[str, Any], *,
                   data_dir: str | os.PathLike | None = None) -> dict[str, TaskDef]:
    """Read and validate task definitions from a YAML file or an equivalent dict.

    Args:
        source: a YAML path, or a dict with the same structure (relative paths then resolve
            against the working directory).
        data_dir: overrides the file's ``data_dir`` (base of every relative local data path).

    Returns:
        ``{task name: TaskDef}`` in file order. Errors name the task, the field, the bad value
        and the valid choices.
    """
    raw, base = _read_source(source)
    _check_fields("the task definitions", raw, TOP_LEVEL_FIELDS)
    tasks = raw.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks={tasks!r} must be a non-empty mapping of task name -> task definition")
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    else:
        root = _resolve(raw["data_dir"], base) if raw.get("data_dir") is not None else base
    max_length = raw.get("max_length", 128)
    return {str(name): _parse_task(str(name), spec, Path(root), max_length) for name, spec in tasks.items()}


def _read_source(source: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], Path]:
    if isinstance(source, Mapping):
        return source, Path(".")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"task definitions file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{str(path)!r} must hold a YAML mapping with a 'tasks:' key, not {raw!r}")
    return raw, path.resolve().parent


def _parse_task(name: str, spec: Any, root: Path, max_length: Any) -> TaskDef:
    where = f"task {name!r}"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: definition {spec!r} must be a mapping of fields")
    _check_fields(where, spec, TASKCONFIG_FIELDS + TASKDEF_FIELDS)
    data = spec.get("data")
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: data={data!r} must be a mapping with at least 'kind'; valid fields: "
                         f"{sorted(f.name for f in dataclasses.fields(DataSource))}")
    _check_fields(f"{where}, data", data, tuple(f.name for f in dataclasses.fields(DataSource)))
    try:
        source = DataSource(**data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}, data: {e}") from None
    if source.kind in FILE_KINDS:
        source = dataclasses.replace(source, path=_resolve(source.path, root))
    metrics = spec.get("metrics", ())
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
        raise ValueError(f"{where}: metrics={metrics!r} must be a list, e.g. [accuracy]")
    try:
        fields = {k: spec[k] for k in TASKCONFIG_FIELDS if k in spec}
        task = TaskConfig(**{"max_length": max_length, **fields, "options": spec.get("options") or {}})
        label_map = dict(spec.get("label_map") or {})
        return TaskDef(name=name, task=task, data=source, metrics=tuple(metrics), label_map=label_map)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def _check_fields(where: str, mapping: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in set(mapping) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(valid)}")


def _resolve(path: str | os.PathLike, base: Path) -> str:
    """``path`` itself if absolute, else ``base / path``, normalised (``..`` folded)."""
    p = Path(path).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)
