"""Reading a task's split into standard columns, from GLUE TSV, CSV, TSV, JSONL or the HF hub.

Every reader ends in the same standard columns: ``text_a``, optional ``text_b`` and ``label`` (a
class id, a float for regression, a multi-hot float list for multi-label).

GLUE TSV files are read with a plain split on tabs (no quoting: texts hold bare ``"``), through a
``utf-8-sig`` decoder (MRPC starts with a BOM), keeping a last line without a final newline (CoLA dev).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow as pa

from ..config import TaskConfig
from ..tasks import kind_of
from ..tasks.classification import class_id_converter
from ..tasks.regression import to_float
from ..validation import check_choice
from .conll import convert_tags, map_token_columns, read_conll_dataset
from .sources import GLUE_LAYOUTS
from .squad import QA_COLUMNS, qa_columns, read_squad_split
from .taskdefs import TaskDef

Columns = dict[str, list[Any]]
LabelConverter = Callable[[Any], Any]
_EXTENSIONS = {"glue_tsv": ".tsv", "tsv": ".tsv", "csv": ".csv", "jsonl": ".jsonl", "squad_json": ".json",
               "conll": ".txt"}


def make_label_converter(task: TaskConfig, label_map: Mapping[str, int]) -> LabelConverter:
    """A function raw label -> the ``label`` column's value, as the task's kind reads labels
    (``TaskKind.label_converter``): a class id, a float (regression), a multi-hot list, ..."""
    return kind_of(task).label_converter(label_map)


def _read_lines(path: str | os.PathLike) -> list[str]:
    """Lines without their terminators; a BOM is dropped and a last line without ``\\n`` is kept."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = text.split("\n")  # not splitlines(): it also splits on \x0b, \x1c, \u2028 inside texts
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_tsv_columns(path: str | os.PathLike, names: Sequence[str] | None = None,
                     skip_malformed: bool = False) -> Columns:
    """Read a TSV file into ``{column name: values}``, all strings, splitting on tabs only.

    Args:
        names: the column names of a header-less file; ``None`` reads them from the first line.
        skip_malformed: skip rows with the wrong number of fields instead of raising.
    """
    lines, first = _read_lines(path), 1
    if names is None:
        if not lines:
            raise ValueError(f"{str(path)!r} is empty; expected a header row")
        names, lines, first = lines[0].split("\t"), lines[1:], 2
    columns: Columns = {name: [] for name in names}
    for lineno, line in enumerate(lines, start=first):
        fields = line.split("\t")
        if len(fields) != len(columns):
            if skip_malformed:
                continue
            raise ValueError(f"{str(path)!r}, line {lineno}: {len(fields)} tab-separated fields, expected "
                             f"{len(columns)} {list(columns)}")
        for values, field in zip(columns.values(), fields, strict=True):
            values.append(field)
    return columns


def read_csv_columns(path: str | os.PathLike) -> Columns:
    """Read a CSV file with a header row (standard ``"`` quoting) into ``{column name: values}``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns: Columns = {name: [] for name in reader.fieldnames or ()}
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"{str(path)!r}, line {reader.line_num}: expected {len(columns)} fields "
                                 f"{list(columns)}")
            for name, values in columns.items():
                values.append(row[name])
    return columns


def read_jsonl_columns(path: str | os.PathLike) -> Columns:
    """Read one JSON object per line (blank lines skipped); keys missing from a row give ``None``."""
    rows = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(path)!r}, line {lineno}: invalid JSON ({e.msg})") from None
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def map_columns(ds: datasets.Dataset, text_columns: Sequence[str], label_column: str,
                convert_label: LabelConverter, where: str = "dataset") -> datasets.Dataset:
    """Select ``text_columns`` (one or two) and ``label_column`` as ``text_a``/``text_b``/``label``.

    Shared by every source (hub datasets included). A ``ClassLabel`` label column is turned back
    into its names first, so ``convert_label``'s label map decides the ids whatever the source order.
    """
    targets = dict(zip(text_columns, ("text_a", "text_b"), strict=False))
    if ds.num_rows == 0:  # else datasets fails later with an error naming neither file nor task
        raise ValueError(f"{where}: has no rows (an empty file, or a header only)")
    for column in (*text_columns, label_column):
        if column not in ds.column_names:
            raise ValueError(f"{where}: column {column!r} not found; available columns: {ds.column_names}")
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        convert_label = partial(_class_label_name, names=tuple(feature.names), convert=convert_label)
        ds = ds.cast_column(label_column, datasets.Value("int64"))
    ds = ds.select_columns([*text_columns, label_column])
    ds = ds.map(_convert_batch, batched=True, with_indices=True, remove_columns=ds.column_names,
                fn_kwargs={"targets": targets, "label_column": label_column, "convert": convert_label,
                           "where": where})
    return ds.select_columns([*targets.values(), "label"])


def _class_label_name(value: int, names: tuple[str, ...], convert: LabelConverter) -> Any:
    return convert(names[value] if 0 <= value < len(names) else value)


def _convert_batch(batch: Columns, indices: list[int], targets: dict[str, str], label_column: str,
                   convert: LabelConverter, where: str) -> Columns:
    out = {target: batch[source] for source, target in targets.items()}
    labels = []
    for index, value in zip(indices, batch[label_column], strict=True):
        try:
            labels.append(convert(value))
        except ValueError as e:
            raise ValueError(f"{where}, row {index}: {e}") from None
    return out | {"label": labels}


def read_glue_tsv(path: str | os.PathLike, glue_task: str,
                  convert_label: LabelConverter | None = None) -> datasets.Dataset:
    """Read an official GLUE TSV file of ``glue_task`` (a ``GLUE_LAYOUTS`` key) into standard columns.

    Labels follow the hub (``nyu-mll/glue``) ids unless ``convert_label`` says otherwise.
    """
    check_choice("glue_task", glue_task, tuple(GLUE_LAYOUTS))
    layout = GLUE_LAYOUTS[glue_task]
    if convert_label is None:  # no labels in the layout marks a regression task (STS-B)
        names = {name: i for i, name in enumerate(layout.labels)}
        convert_label = class_id_converter(len(layout.labels), names) if layout.labels else to_float
    columns = read_tsv_columns(path, layout.header, skip_malformed=layout.skip_malformed)
    return map_columns(datasets.Dataset.from_dict(columns), layout.text_columns, layout.label_column,
                       convert_label, where=str(path))


def load_split(task_def: TaskDef, split: Literal["train", "dev"],
               cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """The standard-column dataset of a task's ``"train"`` or ``"dev"`` split, in the row order
    its kind needs (``TaskKind.arrange``: ranking puts one query's candidates together)."""
    try:
        ds = _read_split(task_def, split, cache_dir)
    except (FileNotFoundError, ValueError) as e:  # name the task: a file path alone may not say which
        if str(e).startswith(f"task {task_def.name!r}"):
            raise
        error = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
        raise error(f"task {task_def.name!r}, {split} split: {e}") from e
    return task_def.kind.arrange(ds)


def _read_split(task_def: TaskDef, split: Literal["train", "dev"],
                cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """The standard-column dataset of a task's ``"train"`` or ``"dev"`` split, as read.

    Local files are ``<data.path>/<split name><ext>`` (a split name with a suffix is the file name).
    """
    check_choice("split", split, ("train", "dev"))
    source, name = task_def.data, getattr(task_def.data, split)
    if name is None:
        raise ValueError(f"task {task_def.name!r} has no {split} split (data.{split} is null)")
    qa = task_def.kind.columns == QA_COLUMNS  # rows of question, context, answers (squad.py)
    tagged = "tokens" in task_def.kind.columns  # sentences of words and tags (conll.py)
    if source.kind == "conll" and not tagged:
        raise ValueError(f"data kind 'conll' holds tagged words; type={task_def.task.type!r} cannot read them")
    if source.kind == "squad_json":
        if not qa:
            raise ValueError(f"data kind 'squad_json' holds QA rows; type={task_def.task.type!r} cannot read them")
        return read_squad_split(source.path, name)
    convert = make_label_converter(task_def.task, task_def.label_map)
    if source.kind == "hub":
        cache = None if cache_dir is None else str(cache_dir)
        ds = datasets.load_dataset(source.path, source.subset, split=name, cache_dir=cache)
        return _standard(ds, source, convert, f"task {task_def.name!r} ({source.path}/{source.subset}:{name})",
                         qa, tagged)
    path = Path(source.path) / (name if Path(name).suffix else name + _EXTENSIONS[source.kind])
    if source.kind == "glue_tsv":
        return read_glue_tsv(path, source.glue_task, convert)
    if source.kind == "conll":
        return convert_tags(read_conll_dataset(path, source.tag_column), convert, where=str(path))
    readers = {"tsv": read_tsv_columns, "csv": read_csv_columns, "jsonl": read_jsonl_columns}
    try:
        ds = datasets.Dataset.from_dict(readers[source.kind](path))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. a JSONL key holding both 0 and "pos"
        raise ValueError(f"{str(path)!r}: a column mixes value types ({e})") from None
    return _standard(ds, source, convert, str(path), qa, tagged)


def _standard(ds: datasets.Dataset, source: Any, convert: LabelConverter, where: str, qa: bool,
              tagged: bool) -> datasets.Dataset:
    """A hub or table dataset in the kind's standard columns (QA rows, tagged words, or text + label)."""
    if qa:
        return qa_columns(ds, source.text_columns, source.label_column, where)
    if tagged:
        return _tagged(ds, source, convert, where)
    return map_columns(ds, source.text_columns, source.label_column, convert, where=where)


def _tagged(ds: datasets.Dataset, source: Any, convert: LabelConverter, where: str) -> datasets.Dataset:
    """A JSONL/hub dataset's word-list and tag-list columns -> ``tokens`` and ``tags`` (class ids)."""
    columns = map_token_columns(ds, source.text_columns[0], source.label_column, where=where)
    return convert_tags(columns, convert, where=where)
