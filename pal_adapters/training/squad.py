"""SQuAD data and metric: the official v1.1 JSON (or JSONL / hub ``squad``) into standard QA columns,
and the official exact-match / F1 scores.

Every QA reader ends in the same columns, those of the hub's ``squad``:
``id`` (str), ``question``, ``context`` and ``answers`` = ``{"text": [...], "answer_start": [...]}``
(character offsets into ``context``; several gold answers per dev question).

The SQuAD JSON nests ``data -> articles -> paragraphs -> qas``. An article range (``"0:38"``, ``"38:"``,
Python slice syntax over the ``data`` list) selects whole articles, so a train/held-out split made
from one file never shares a paragraph between its parts.

The metric (``squad_scores``, the official exact match and F1) lives with the task kind that scores
with it, in ``pal_adapters/tasks/squad_metric.py``; it is re-exported here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..tasks.squad_metric import exact_match, f1, normalize_answer, squad_scores

QA_COLUMNS = ("id", "question", "context", "answers")
__all__ = ["QA_COLUMNS", "exact_match", "f1", "normalize_answer", "qa_columns", "read_squad_json",
           "read_squad_split", "squad_columns", "squad_scores"]
_SPLIT_RANGE = re.compile(r"^(?P<name>.+?)\[(?P<range>-?\d*:-?\d*)\]$")


# ---- reading ---------------------------------------------------------------------------------------
def parse_article_range(articles: str | None) -> slice:
    """``"0:38"`` -> ``slice(0, 38)``; ``"38:"`` -> ``slice(38, None)``; ``None`` or ``":"`` -> everything."""
    if articles is None:
        return slice(None)
    parts = str(articles).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"articles={articles!r} is not a range; write START:STOP, e.g. '0:38' or '38:'") from None
    return slice(start, stop)


def split_file_and_articles(name: str) -> tuple[str, str | None]:
    """A split name ``"dev-v1.1.json[0:38]"`` -> ``("dev-v1.1.json", "0:38")``; no brackets -> ``(name, None)``."""
    match = _SPLIT_RANGE.match(name)
    return (match["name"], match["range"]) if match else (name, None)


def read_squad_json(path: str | os.PathLike, articles: str | None = None) -> datasets.Dataset:
    """The questions of a SQuAD v1.1/v2.0-style JSON file in the standard QA columns (+ ``title``).

    Args:
        path: the JSON file (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``).
        articles: an article range (``"0:38"``, ``"38:"``) selecting whole articles; ``None``: all.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"SQuAD file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{str(path)!r} is not SQuAD JSON: expected an object with a 'data' list of articles")
    columns: dict[str, list[Any]] = {name: [] for name in (*QA_COLUMNS, "title")}
    for article in raw["data"][parse_article_range(articles)]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                columns["id"].append(str(qa["id"]))
                columns["question"].append(qa["question"])
                columns["context"].append(paragraph["context"])
                columns["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                           "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
                columns["title"].append(article.get("title", ""))
    return datasets.Dataset.from_dict(columns)


def read_squad_split(folder: str | os.PathLike, name: str) -> datasets.Dataset:
    """A ``squad_json`` data source's split: ``name`` is a file in ``folder`` (``.json`` added when it
    does not end so), optionally with an article range, e.g. ``"dev-v1.1.json[0:38]"``."""
    file, articles = split_file_and_articles(name)
    return read_squad_json(Path(folder) / (file if file.endswith(".json") else file + ".json"), articles)


def qa_columns(ds: datasets.Dataset, text_columns: Sequence[str], answers_column: str,
               where: str = "dataset") -> datasets.Dataset:
    """A JSONL or hub dataset's ``(question, context)`` columns and answers column -> the standard QA
    columns (``id`` kept if present)."""
    if len(text_columns) != 2:
        raise ValueError(f"{where}: text_columns={list(text_columns)!r} must name the question and the context "
                         "columns of a QA task")
    names = {text_columns[0]: "question", text_columns[1]: "context", answers_column: "answers"}
    missing = [c for c in names if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: columns {missing} not found; available columns: {ds.column_names}")
    ds = ds.select_columns([c for c in ds.column_names if c in names or c == "id"])
    return squad_columns(ds.rename_columns({k: v for k, v in names.items() if k != v}), where)


def squad_columns(ds: datasets.Dataset, where: str = "dataset") -> datasets.Dataset:
    """The standard QA columns of a hub or JSONL dataset already in SQuAD's flat form.

    ``id`` is made from the row number when absent; ``answers`` may also be a list of
    ``{"text", "answer_start"}`` objects (it is turned into the dict-of-lists form).
    """
    missing = [c for c in ("question", "context", "answers") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: QA columns {missing} not found; available columns: {ds.column_names} "
                         f"(expected {list(QA_COLUMNS)})")
    if "id" not in ds.column_names:
        ds = ds.add_column("id", [str(i) for i in range(len(ds))])
    ds = ds.select_columns(list(QA_COLUMNS))
    return ds.map(_standard_answers, fn_kwargs={"where": where}, with_indices=True)


def _standard_answers(row: dict[str, Any], index: int, where: str) -> dict[str, Any]:
    answers = row["answers"]
    if isinstance(answers, list):  # [{"text": ..., "answer_start": ...}, ...]
        answers = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
    if not isinstance(answers, Mapping) or len(answers.get("text") or ()) != len(answers.get("answer_start") or ()):
        raise ValueError(f"{where}, row {index}: answers={row['answers']!r} must hold equally long 'text' and "
                         "'answer_start' lists")
    return {"id": str(row["id"]), "answers": {"text": list(answers["text"]),
                                              "answer_start": [int(s) for s in answers["answer_start"]]}}
