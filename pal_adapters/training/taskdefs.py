"""Task definitions: what a task is, where its data lives and how it is scored (MT-DNN's task_def.yml).

A YAML file (or an equivalent dict) holds one flat mapping per task::

    data_dir: ../../shared/data/glue   # optional; base of relative data paths (default: the YAML's folder)
    max_length: 128                    # optional; default of every task's max_length
    tasks:
      rte:
        type: classification           # TaskConfig fields: type num_labels labels dropout pooling adapter
        num_labels: 2
        labels: [entailment, not_entailment]   # index = class id; gives label_map by default
        label_map: {entailment: 0, not_entailment: 1}   # optional: raw label string -> class id
        metrics: [accuracy]            # optional: default GLUE's official metrics, else the kind's defaults
        options: {}                    # optional: the kind's options (e.g. QA doc_stride), TaskKind.options
        max_length: 128                # optional
        data: {kind: glue_tsv, glue_task: rte}   # see DataSource

Relative paths in a file are resolved against the file's folder; ``load_task_defs(path, data_dir=...)``
overrides ``data_dir`` (resolved against the working directory).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..config import TaskConfig, check_choice
from ..tasks import TaskKind, get_kind
from ..tasks.classification import ClassificationKind
from ..tasks.regression import RegressionKind
from .metrics import GLUE_TASK_METRICS

SourceKind = Literal["glue_tsv", "csv", "tsv", "jsonl", "hub", "squad_json", "conll"]
FILE_KINDS = ("glue_tsv", "csv", "tsv", "jsonl", "squad_json", "conll")  # the kinds read from local files


@dataclass(frozen=True)
class GlueLayout:
    """Columns of one GLUE task in the official TSV files and on the hub (``nyu-mll/glue``).

    ``labels`` is the hub's ClassLabel order (entailment = 0 for RTE/QNLI/MNLI), so TSV and hub data
    agree; ``()`` marks regression. ``header`` names the columns of a header-less file (CoLA).
    ``skip_malformed`` skips rows with a wrong field count, as the BERT processors do for QQP.
    """

    dir_name: str
    text_columns: tuple[str, ...]
    label_column: str
    hub_text_columns: tuple[str, ...]
    labels: tuple[str, ...] = ()
    header: tuple[str, ...] | None = None
    dev_split: str = "dev"
    hub_dev_split: str = "validation"
    skip_malformed: bool = False


_PAIR = ("sentence1", "sentence2")
GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout("CoLA", ("sentence",), "label", ("sentence",), ("unacceptable", "acceptable"),
                       header=("source", "label", "author_mark", "sentence")),
    "sst2": GlueLayout("SST-2", ("sentence",), "label", ("sentence",), ("negative", "positive")),
    "mrpc": GlueLayout("MRPC", ("#1 String", "#2 String"), "Quality", _PAIR,
                       ("not_equivalent", "equivalent")),
    "qqp": GlueLayout("QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
                      ("not_duplicate", "duplicate"), skip_malformed=True),
    "stsb": GlueLayout("STS-B", _PAIR, "score", _PAIR),
    "mnli": GlueLayout("MNLI", _PAIR, "gold_label", ("premise", "hypothesis"),
                       ("entailment", "neutral", "contradiction"), dev_split="dev_matched",
                       hub_dev_split="validation_matched"),
    "qnli": GlueLayout("QNLI", ("question", "sentence"), "label", ("question", "sentence"),
                       ("entailment", "not_entailment")),
    "rte": GlueLayout("RTE", _PAIR, "label", _PAIR, ("entailment", "not_entailment")),
    "wnli": GlueLayout("WNLI", _PAIR, "label", _PAIR, ("not_entailment", "entailment")),
}


@dataclass(frozen=True)
class DataSource:
    """Where a task's examples come from; every field is resolved in ``__post_init__``.

    Attributes:
        kind: ``"glue_tsv"`` (official GLUE TSV, columns from ``glue_task``), ``"csv"``, ``"tsv"``
            (header row, no quoting), ``"jsonl"`` (one object per line), ``"hub"``
            (``datasets.load_dataset(path, subset, split=...)``) or ``"squad_json"`` (SQuAD's
            official JSON; a split name may select articles: ``"dev-v1.1.json[0:38]"``) or ``"conll"``
            (CoNLL token-per-line files ``<split>.txt``, for token classification; see conll.py).
        path: a folder holding ``<split>.<ext>`` files (GLUE default: the task's folder name, e.g.
            ``RTE``), or the hub dataset name.
        subset: the hub config name (e.g. ``rte`` for ``nyu-mll/glue``).
        glue_task: a key of ``GLUE_LAYOUTS``; required for ``glue_tsv``, optional for ``hub``
            (it then gives the hub column names).
        train, dev: split names (file stem or hub split); ``None`` = no such split (e.g. eval-only
            tasks); ``""`` = the default (``train``; ``dev``, GLUE MNLI ``dev_matched``, hub ``validation``).
        text_columns: one or two text columns, mapped to ``text_a``/``text_b``.
        label_column: the label column, mapped to ``label`` (default ``label``). Token classification
            from JSONL or the hub: ``text_columns: [tokens]`` (a word list) and ``label_column`` the tag
            list (e.g. ``ner_tags``), mapped to ``tokens``/``tags``.
        tag_column: ``conll`` only: the tag's index among a line's fields (default -1, the last).
    """

    kind: SourceKind
    path: str | None = None
    subset: str | None = None
    glue_task: str | None = None
    train: str | None = ""
    dev: str | None = ""
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    tag_column: int | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, get_args(SourceKind))
        if (self.tag_column is not None) and self.kind != "conll":
            raise ValueError(f"tag_column={self.tag_column!r} is only used by kind='conll', not kind={self.kind!r}")
        if self.kind == "conll" and self.tag_column is None:
            self._set("tag_column", -1)
        layout = self._glue_layout()
        default_dev = "dev" if layout is None else layout.dev_split
        if self.kind == "hub":
            default_dev = "validation" if layout is None else layout.hub_dev_split
        self._set("train", "train" if self.train == "" else self.train)
        self._set("dev", default_dev if self.dev == "" else self.dev)
        if self.train is None and self.dev is None:
            raise ValueError("train=None and dev=None: a data source needs at least one split")
        if self.path is None:
            if self.kind != "glue_tsv":
                raise ValueError(f"path=None: kind={self.kind!r} needs a path (a folder or a hub dataset)")
            self._set("path", layout.dir_name)
        self._resolve_columns(layout)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _glue_layout(self) -> GlueLayout | None:
        if self.glue_task is None:
            if self.kind == "glue_tsv":
                raise ValueError(f"glue_task=None: kind='glue_tsv' needs one of {sorted(GLUE_LAYOUTS)}")
            return None
        if self.kind not in ("glue_tsv", "hub"):
            raise ValueError(f"glue_task={self.glue_task!r} is only used by kind 'glue_tsv' or 'hub', "
                             f"not kind={self.kind!r}")
        check_choice("glue_task", self.glue_task, tuple(GLUE_LAYOUTS))
        return GLUE_LAYOUTS[self.glue_task]

    def _resolve_columns(self, layout: GlueLayout | None) -> None:
        columns = self.text_columns
        columns = tuple(columns) if isinstance(columns, (list, tuple)) else columns
        if self.kind == "glue_tsv":
            label = self.label_column
            if columns not in ((), layout.text_columns) or label not in (None, layout.label_column):
                raise ValueError(f"text_columns={columns!r}, label_column={label!r}: kind='glue_tsv' takes "
                                 "its columns from glue_task; use kind='tsv' to choose them")
            columns, label = layout.text_columns, layout.label_column
        elif self.kind == "squad_json":  # SQuAD's own JSON (training/squad.py): fixed QA columns
            columns, label = ("question", "context"), "answers"
        elif self.kind == "conll":  # CoNLL files (training/conll.py): words and tags, by position
            columns, label = ("tokens",), "tags"
        else:
            columns = columns or (layout.hub_text_columns if layout else ())
            label = self.label_column or "label"
        if not isinstance(columns, tuple) or len(columns) not in (1, 2):
            raise ValueError(f"text_columns={columns!r} must list one or two column names")
        self._set("text_columns", columns)
        self._set("label_column", label)

    @property
    def glue_layout(self) -> GlueLayout | None:
        """The GLUE layout selected by ``glue_task``, if any."""
        return GLUE_LAYOUTS.get(self.glue_task) if self.glue_task else None


@dataclass(frozen=True)
class TaskDef:
    """One task: its head config, data, metrics, maximum length, label mapping and kind options.

    ``label_map`` maps raw label strings to class ids. It defaults to ``task.labels`` (index = id),
    then to the GLUE layout's hub label order; numeric labels ("0", "1", 2) need no entry.
    ``metrics`` default to a GLUE task's official ones, else to the kind's ``default_metrics``.
    ``options`` are the kind's options (``TaskKind.options``); ``kind`` is the task's kind object.
    """

    name: str
    task: TaskConfig
    data: DataSource
    metrics: tuple[str, ...] = ()
    max_length: int = 128
    label_map: dict[str, int] = field(default_factory=dict, hash=False)
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        layout = self.data.glue_layout
        if not isinstance(self.options, Mapping):
            raise ValueError(f"options={self.options!r} must be a mapping of option name -> value")
        object.__setattr__(self, "options", dict(self.options))
        get_kind(self.task.type)(self.task, **self.options)  # unknown options raise here, naming the valid ones
        metrics = tuple(self.metrics) or GLUE_TASK_METRICS.get(self.data.glue_task or "", ())
        metrics = metrics or self.kind.default_metrics
        object.__setattr__(self, "metrics", metrics)
        _check_metrics(self.kind, metrics)
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2:
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 2")
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
        """The task's kind, with this definition's ``options`` (a new, stateless object each time:
        not stored, so the fields are all of a definition and ``TaskDef(**vars(d))`` rebuilds it)."""
        return get_kind(self.task.type)(self.task, **self.options)

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
        d.update(metrics=list(self.metrics), max_length=self.max_length, label_map=dict(self.label_map))
        if self.options:
            d["options"] = dict(self.options)
        d["data"] = data
        return d


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
TASKDEF_FIELDS = ("metrics", "data", "max_length", "label_map", "options")
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
        task = TaskConfig(**{k: spec[k] for k in TASKCONFIG_FIELDS if k in spec})
        label_map = dict(spec.get("label_map") or {})
        return TaskDef(name=name, task=task, data=source, metrics=tuple(metrics),
                       max_length=spec.get("max_length", max_length), label_map=label_map,
                       options=spec.get("options") or {})
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
