"""What a kind of task is: the one seam between "a task type" and everything that depends on it.

A ``TaskKind`` is a small, stateless object built from a task's ``TaskConfig`` (``kind_of(task)``
in ``pal_adapters/tasks/__init__.py``). Heads, readers, tokenization, collation, losses,
evaluation, distillation and ``predict`` ask the kind; nothing else compares ``task.type`` to a
string. Adding a kind = one module in ``pal_adapters/tasks/`` with a subclass + one row in
``TASK_KINDS`` + its tests.

The life of a task's data, and the method of the kind that owns each step::

    reader  -> standard columns (per kind, see ``columns``)     label column: ``label_converter``
    arrange(ds)                 e.g. ranking groups one query's candidates into consecutive rows
    encode(columns, tokenizer, max_length) -> features
            model inputs (input_ids, attention_mask[, token_type_ids]), ``labels``, ``length``
            and any extra non-model columns (QA: example_id, offset_mapping, context, answers).
            May return MORE rows than it got (QA windows); every returned column has one value
            per returned row.
    collate_labels(labels, length)  per-row labels -> one tensor; ``length`` = padded T of the batch
    pad_labels(labels, length)      re-pad collated labels to a longer T (mixed batches)
    model forward: head reads tokens (``token_level``) or the pooled vector; the linear layer
            has ``out_features`` outputs; ``shape_logits`` gives the kind's logits shape
    loss(logits, labels)        validates labels (errors name the bad shape/dtype/value)
    dev:  batch_outputs(logits, batch) per batch (kept on CPU) -> finish(outputs) once
            -> (predictions, references) -> score(metric names, predictions, references)
    predict: encode_for_predict(rows, tokenizer, max_length) -> (inputs, context);
            describe(logits, context) -> one JSON-able dict per input row
    distillation (only ``distillable`` kinds): teacher_targets(logits), distillation_loss(...)

Shapes (n rows of the task in a batch, T tokens, d hidden, C = ``out_features``):

| kind                 | head reads      | logits      | collated labels                 |
|----------------------|-----------------|-------------|---------------------------------|
| classification       | pooled (n, d)   | (n, C)      | (n,) long class ids, -100 = skip|
| regression           | pooled (n, d)   | (n,)        | (n,) float                      |
| multi_label          | pooled (n, d)   | (n, C)      | (n, C) float 0/1                |
| ranking              | pooled (n, d)   | (n,) scores | (n,) 0/1, one 1 per group       |
| token_classification | tokens (n, T, d)| (n, T, C)   | (n, T) long, -100 = skip        |
| extractive_qa        | tokens (n, T, d)| (n, T, 2)   | (n, 2) long start, end token    |

Conventions every kind keeps:

- Labels equal to ``IGNORE_INDEX`` (-100) are skipped by the loss. A batch whose labels are ALL
  skipped has no signal: ``loss`` returns ``labels.zero_loss(logits)``, an exact 0 that is connected to
  the graph (``backward`` works, every gradient is 0), never NaN.
- ``loss`` raises ``TypeError``/``ValueError`` naming the bad value and what was expected (labels
  that are not a tensor, of the wrong shape, float class ids, ...); it never silently broadcasts,
  truncates or guesses.
- Kinds are stateless: everything an evaluation needs travels in the per-batch outputs, so
  ``finish`` needs nothing but them (a kind that post-processes over examples, like QA, carries
  what it needs from ``encode`` in extra columns; collators hand extra columns to the batch as
  Python lists, in row order).
- Per-kind options (e.g. QA ``doc_stride``, NER ``label_all_subtokens``) are declared in
  ``options`` with their defaults; the task's own ``TaskConfig.options`` (saved with the model)
  override them and unknown names are an error. They reach the kind as ``self.options``, so
  training, ``eval``, ``predict`` and the server build the same kind from the task alone.
- ``input_forms``: the input rows ``predict`` may give the kind (``rows.py``); ``input_problem``
  says why a row cannot be read, naming the field.
- ``group_size`` consecutive rows form one unit that batching never splits (ranking: one query's
  candidates; every other kind: 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .metrics import Metric
from .rows import describe_forms, form_of, row_problem

if TYPE_CHECKING:  # config.py imports the registry lazily; importing it here would be circular
    from ..config import TaskConfig

Columns = dict[str, list[Any]]


class TaskKind:
    """Base class of a kind of task; the defaults implement a sequence-level (pooled) kind.

    Subclasses set the class attributes and override what differs. Construct with
    ``Kind(task_config, **options)``; ``self.task`` and ``self.options`` are all the state.

    Class attributes:
        name: the ``TaskConfig.type`` string of this kind (the registry key).
        token_level: the head reads every token ``(n, T, d)`` instead of the pooled ``(n, d)``.
        fixed_num_labels: the only valid ``num_labels`` (regression/ranking 1, QA 2), or None when
            the user chooses (``TaskConfig(num_labels=None)`` then resolves to 2).
        uses_label_names: ``TaskConfig.labels`` / a task definition's ``label_map`` name the
            ``num_labels`` classes (so their lengths must agree); False for scores and spans.
        columns: the standard columns a reader produces for this kind (``"text_b"`` optional).
        metrics: metric name -> ``fn(predictions, references) -> float``, over what ``finish`` returns.
        default_metrics: used when a task definition names none (and it is no GLUE task).
        distillable: teachers' outputs can be soft targets (``teacher_targets``) for this kind.
        options: kind-specific options and their defaults (see the module docstring).
        input_forms: the forms of input row (``rows.INPUT_FORMS``) this kind can read.
        windows_long_inputs: an input longer than ``max_length`` becomes several windows (QA),
            rather than being cut or refused (the server's length rule).
    """

    name: ClassVar[str] = ""
    token_level: ClassVar[bool] = False
    fixed_num_labels: ClassVar[int | None] = None
    uses_label_names: ClassVar[bool] = True
    columns: ClassVar[tuple[str, ...]] = ("text_a", "text_b", "label")
    metrics: ClassVar[Mapping[str, Metric]] = MappingProxyType({})
    default_metrics: ClassVar[tuple[str, ...]] = ()
    distillable: ClassVar[bool] = False
    options: Mapping[str, Any] = MappingProxyType({})
    input_forms: ClassVar[tuple[str, ...]] = ("text", "pair")
    windows_long_inputs: ClassVar[bool] = False

    def __init__(self, task: TaskConfig):
        """The kind of ``task``, with the task's ``options`` over the kind's defaults."""
        self.task = task
        unknown = sorted(set(task.options) - set(type(self).options))
        if unknown:
            raise ValueError(f"options {unknown} are not known to task type {self.name!r}; "
                             f"valid options: {sorted(type(self).options) or 'none'}")
        self.options = MappingProxyType({**type(self).options, **task.options})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_labels={self.task.num_labels}, options={dict(self.options)})"

    def __reduce__(self) -> tuple:
        # A mappingproxy cannot be pickled or deep-copied; a kind is rebuilt from its task (which
        # holds its options), so models holding kinds (heads) survive copy.deepcopy and pickle.
        return type(self), (self.task,)

    # ---- configuration (called from TaskConfig.__post_init__) ----------------------------------
    @classmethod
    def check_config(cls, task: TaskConfig) -> None:
        """Raise ``ValueError`` when ``task`` (type, num_labels already resolved) does not fit this
        kind, e.g. ranking without ``num_candidates``. The base checks ``num_candidates`` is unset."""
        if task.num_candidates is not None:
            raise ValueError(f"num_candidates={task.num_candidates!r} is only used by type='ranking', "
                             f"not type={task.type!r}")

    @property
    def out_features(self) -> int:
        """Width of the head's linear layer."""
        return self.task.num_labels

    @property
    def group_size(self) -> int:
        """Consecutive rows that batching keeps together (see the module docstring)."""
        return 1

    # ---- head and loss -------------------------------------------------------------------------
    def shape_logits(self, logits: Tensor) -> Tensor:
        """The linear layer's ``(n, C)`` / ``(n, T, C)`` output -> this kind's logits (table above)."""
        return logits

    def mask_logits(self, logits: Tensor, mask: Tensor | None) -> Tensor:
        """Token-level logits ``(n, T, C)`` with padding taken out of play where the kind needs it;
        ``mask`` ``(n, T)``, nonzero = a real token, or None. Default: unchanged."""
        return logits

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        """Scalar float32 loss of a batch; validates ``labels`` first (see the conventions)."""
        raise NotImplementedError(f"task type {self.name!r} defines no loss")

    # ---- data ----------------------------------------------------------------------------------
    def init_head(self, out: torch.nn.Linear, labels: Sequence[Any]) -> None:
        """Data-dependent initialisation of the head's output layer from the training labels,
        once, before step 0 (``TrainConfig.init_heads_from_labels``). Default: nothing."""

    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], Any]:
        """A function raw label (from a file or the hub) -> the ``label`` column's value.
        Raises ``ValueError`` naming the raw label and what was expected."""
        raise NotImplementedError(f"task type {self.name!r} cannot read labels from data")

    def arrange(self, ds: Any) -> Any:
        """A split's standard-column ``datasets.Dataset`` -> the same rows in the order batching
        needs (ranking: one query's candidates consecutive), validated. Default: unchanged."""
        return ds

    def encode(self, batch: Columns, tokenizer: Any, max_length: int) -> Columns:
        """Standard columns of a batch of rows -> features (see the module docstring).

        Default: ``tokenizer(text_a[, text_b])`` truncated to ``max_length``, unpadded, ``labels``
        = the ``label`` column, ``length`` = tokens per row.
        """
        texts = [batch["text_a"]] + ([batch["text_b"]] if "text_b" in batch else [])
        enc = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        return enc | {"labels": batch["label"], "length": [len(ids) for ids in enc["input_ids"]]}

    def collate_labels(self, labels: Sequence[Any], length: int) -> Tensor:
        """Per-row ``labels`` of one batch -> one tensor; ``length`` is the batch's padded T.
        Default: ``torch.tensor`` (ints stay long, floats stay float)."""
        return torch.stack(list(labels)) if torch.is_tensor(labels[0]) else torch.tensor(list(labels))

    def pad_labels(self, labels: Tensor, length: int) -> Tensor:
        """Collated labels -> labels for inputs padded to ``length`` tokens. Default: unchanged;
        token-level labels ``(n, T)`` are right-padded with ``IGNORE_INDEX``."""
        return labels

    # ---- evaluation ----------------------------------------------------------------------------
    def batch_outputs(self, logits: Tensor, batch: Mapping[str, Any]) -> Any:
        """What to keep of one dev batch (small, on CPU): by default ``(logits, labels)``.
        ``batch`` is the collated dev batch: model inputs, ``labels`` (if any), extra columns."""
        if "labels" not in batch:
            raise ValueError(f"task type {self.name!r}: a dev batch has no 'labels' (keys: {sorted(batch)})")
        return logits.detach().float().cpu(), torch.as_tensor(batch["labels"]).cpu()

    def finish(self, outputs: list[Any]) -> tuple[Any, Any]:
        """Every dev batch's ``batch_outputs``, in order -> ``(predictions, references)`` over the
        whole dev set, as the kind's metrics read them."""
        raise NotImplementedError(f"task type {self.name!r} defines no evaluation")

    def score(self, names: Sequence[str], predictions: Any, references: Any) -> dict[str, float]:
        """``{metric: value}`` for each name; unknown names raise, listing this kind's metrics."""
        names = list(names)
        bad = [n for n in names if n not in self.metrics]
        if bad or not names:
            raise ValueError(f"metrics {bad or names} do not fit type={self.name!r}; choose from "
                             f"{sorted(self.metrics)}")
        return {n: float(self.metrics[n](predictions, references)) for n in names}

    # ---- predict -------------------------------------------------------------------------------
    def input_problem(self, row: Any) -> str | None:
        """Why this task cannot read the input ``row`` (one line naming the field), or None.

        A row no task can read (blank, not a string, ...: ``rows.row_problem``), or one in a form
        the task does not read: a pair for a task trained on single texts, a text for QA, ...
        """
        problem = row_problem(row)
        if problem:
            return problem
        wanted = (self.task.inputs,) if self.task.inputs else self.input_forms
        if form_of(row) not in wanted:
            return (f"task type {self.name!r} reads {describe_forms(wanted)}; this input is "
                    f"{describe_forms((form_of(row),))}")
        return None

    def encode_for_predict(self, rows: Sequence[Mapping[str, Any]], tokenizer: Any,
                           max_length: int) -> tuple[dict[str, Tensor], Any]:
        """Input rows (``{"text": ..., "text_b": ...}``; QA: ``question``/``context``) -> padded
        model inputs and a ``context`` that ``describe`` needs. Tasks whose inputs come out equal
        share one ``predict_all``. Default: ``tokenizer(text[, text_b])``, context = None."""
        texts = [[r["text"] for r in rows]] + ([[r["text_b"] for r in rows]] if "text_b" in rows[0] else [])
        enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}, None

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        """A predict batch's logits (rows as ``encode_for_predict`` made them) -> one JSON-able
        prediction per input row. Default: ``{"logits": ...}`` per row."""
        return [{"logits": row.float().tolist()} for row in logits.detach().cpu()]

    # ---- distillation --------------------------------------------------------------------------
    def check_distillable(self) -> None:
        if not self.distillable:
            raise ValueError(f"task type {self.name!r} cannot be distilled; distillation needs a task of "
                             f"type {distillable_names()}")

    @property
    def target_width(self) -> int | None:
        """Width of one row of ``teacher_targets`` (a probability file's row): C, or None for
        one scalar per row (regression)."""
        return self.out_features

    def teacher_targets(self, logits: Tensor) -> Tensor:
        """A teacher's logits -> its soft targets (class probabilities; regression: predictions)."""
        self.check_distillable()
        raise NotImplementedError

    def distillation_loss(self, student_logits: Tensor, targets: Tensor) -> Tensor:
        """The student's scalar loss against the mean of its teachers' ``teacher_targets``."""
        self.check_distillable()
        raise NotImplementedError


def distillable_names() -> list[str]:
    from . import TASK_KINDS  # the registry imports this module

    return sorted(name for name, cls in TASK_KINDS.items() if cls.distillable)
