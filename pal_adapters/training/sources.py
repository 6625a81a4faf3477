"""Data sources: where a task's examples come from and which columns they use.

Owns ``DataSource`` (one task's ``data:`` mapping in a task-definition file, validated and
resolved to concrete splits, paths and columns) and the GLUE table ``GLUE_LAYOUTS`` (the
official TSV and hub columns and label order of each GLUE task). It knows nothing about task
heads or metrics; ``taskdefs.py`` combines a ``DataSource`` with those into a ``TaskDef``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..validation import check_choice

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
