"""Reading token-tagged data (NER) into the standard columns ``tokens`` and ``tags``.

Every source ends in two list columns per sentence: ``tokens`` (the words) and ``tags`` (one tag
string per word, e.g. ``B-PER``). Class ids are decided later, by the task's label map.

- CoNLL files (``read_conll``): one token per line, whitespace-separated columns, a blank line
  between sentences, ``-DOCSTART-`` lines skipped; the tag is the last column unless told otherwise
  (CoNLL-2003: ``token POS chunk NER``).
- JSONL or hub data (``map_token_columns``): a token-list column and a tag-list column. Integer tags
  with a ``ClassLabel`` feature (hub ``conll2003``'s ``ner_tags``, ``wikiann``) are turned back into
  their names, so the task's label map decides the ids whatever the source order; plain integers
  become numeric strings, which the label converter reads as class ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

Columns = dict[str, list[Any]]
DOCSTART = "-DOCSTART-"
_STRINGS = datasets.Sequence(datasets.Value("string"))


def read_conll(path: str | os.PathLike, tag_column: int = -1, token_column: int = 0) -> Columns:
    """Read a CoNLL file into ``{"tokens": [[word, ...], ...], "tags": [[tag, ...], ...]}``.

    Args:
        tag_column: index of the tag among a line's whitespace-separated fields (negative counts
            from the end; default: the last).
        token_column: index of the word (default: the first).

    A sentence ends at a blank line, a ``-DOCSTART-`` line or the end of the file; empty sentences
    are not kept. A line with too few fields raises an error naming the file and line.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    sentences: Columns = {"tokens": [], "tags": []}
    words: list[str] = []
    tags: list[str] = []
    width = None  # every token line of a file has the same number of fields
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()  # any run of spaces/tabs; also drops "\r\n"
            if not fields or fields[0] == DOCSTART:
                _end_sentence(sentences, words, tags)
                words, tags = [], []
                continue
            width = width or _check_width(len(fields), token_column, tag_column, path, lineno)
            if len(fields) != width:
                raise ValueError(f"{str(path)!r}, line {lineno}: {len(fields)} field(s) {fields}; the file's "
                                 f"first token line has {width}")
            words.append(fields[token_column])
            tags.append(fields[tag_column])
    _end_sentence(sentences, words, tags)
    return sentences


def _check_width(width: int, token_column: int, tag_column: int, path: Any, lineno: int) -> int:
    """``width`` if both columns exist in it and differ, else an error naming the line."""
    if not (-width <= token_column < width and -width <= tag_column < width) or \
            token_column % width == tag_column % width:
        raise ValueError(f"{str(path)!r}, line {lineno}: {width} field(s), which cannot hold token_column="
                         f"{token_column} and a different tag_column={tag_column}")
    return width


def _end_sentence(sentences: Columns, words: list[str], tags: list[str]) -> None:
    if words:
        sentences["tokens"].append(words)
        sentences["tags"].append(tags)


def read_conll_dataset(path: str | os.PathLike, tag_column: int = -1) -> datasets.Dataset:
    """``read_conll`` as a ``datasets.Dataset`` with columns ``tokens`` and ``tags``."""
    columns = read_conll(path, tag_column=tag_column)
    if not columns["tokens"]:
        raise ValueError(f"{str(path)!r} holds no sentences (expected token lines separated by blank lines)")
    return datasets.Dataset.from_dict(columns)


def map_token_columns(ds: datasets.Dataset, tokens_column: str = "tokens", tags_column: str = "tags",
                      where: str = "dataset") -> datasets.Dataset:
    """Select ``tokens_column`` and ``tags_column`` as ``tokens`` / ``tags`` (tag strings).

    A sequence-of-``ClassLabel`` tag column gives its names; other tags become strings. Every row
    must hold as many tags as tokens (the error names the row).
    """
    for column in (tokens_column, tags_column):
        if column not in ds.column_names:
            raise ValueError(f"{where}: column {column!r} not found; available columns: {ds.column_names}")
    names = _class_label_names(ds.features[tags_column])
    ds = ds.select_columns([tokens_column, tags_column])
    # Explicit features: map would otherwise keep integer tags as integers.
    return ds.map(_to_tag_strings, batched=True, with_indices=True, remove_columns=ds.column_names,
                  features=datasets.Features({"tokens": _STRINGS, "tags": _STRINGS}),
                  fn_kwargs={"tokens_column": tokens_column, "tags_column": tags_column, "names": names,
                             "where": where})


def _class_label_names(feature: Any) -> tuple[str, ...] | None:
    """The names of a list-of-ClassLabel feature (``Sequence``/``List`` of ``ClassLabel``), else None."""
    inner = getattr(feature, "feature", None)
    return tuple(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _to_tag_strings(batch: Columns, indices: list[int], tokens_column: str, tags_column: str,
                    names: tuple[str, ...] | None, where: str) -> Columns:
    tokens, tags = [], []
    for index, words, row_tags in zip(indices, batch[tokens_column], batch[tags_column], strict=True):
        if not isinstance(words, list) or not isinstance(row_tags, list) or len(words) != len(row_tags):
            raise ValueError(f"{where}, row {index}: {tokens_column}={words!r} and {tags_column}={row_tags!r} "
                             "must be lists of equal length (one tag per token)")
        tokens.append([str(w) for w in words])
        tags.append([_tag_name(t, names) for t in row_tags])
    return {"tokens": tokens, "tags": tags}


def _tag_name(tag: Any, names: tuple[str, ...] | None) -> str:
    if names is not None and isinstance(tag, int) and 0 <= tag < len(names):
        return names[tag]
    return str(tag)


def convert_tags(ds: datasets.Dataset, convert: Callable[[list[str]], list[int]],
                 where: str = "dataset") -> datasets.Dataset:
    """``tags`` (strings) -> class ids with ``convert`` (a task kind's label converter, one sentence
    at a time); an unknown tag raises an error naming the row."""
    ids = datasets.Features({"tokens": _STRINGS, "tags": datasets.Sequence(datasets.Value("int64"))})
    return ds.map(_convert_rows, batched=True, with_indices=True, features=ids,
                  fn_kwargs={"convert": convert, "where": where})


def _convert_rows(batch: Columns, indices: list[int], convert: Callable[[list[str]], list[int]],
                  where: str) -> Columns:
    tags = []
    for index, row in zip(indices, batch["tags"], strict=True):
        try:
            tags.append(convert(row))
        except ValueError as e:
            raise ValueError(f"{where}, sentence {index}: {e}") from None
    return {"tokens": batch["tokens"], "tags": tags}
