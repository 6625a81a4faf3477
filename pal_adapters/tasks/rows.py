"""What an input row is, for ``predict`` and the server: one home for the forms a task can read.

A row is a JSON object in one of three forms (the keys of ``INPUT_FORMS``):

- ``"text"``: ``{"text": ...}``, one text (SST-2, NER);
- ``"pair"``: ``{"text": ..., "text_b": ...}``, a sentence pair (MRPC, STS-B, RTE, ranking);
- ``"question_context"``: ``{"question": ..., "context": ...}`` (extractive QA).

Other keys (an ``id``, say) are carried along and ignored. A task reads the forms its kind lists
(``TaskKind.input_forms``), narrowed to one by ``TaskConfig.inputs`` when the task records which
(training sets it from the data's text columns). ``row_problem`` says what is wrong with a row for
every task; ``TaskKind.input_problem`` adds whether this task can read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

INPUT_FORMS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "text": ("text",),
    "pair": ("text", "text_b"),
    "question_context": ("question", "context"),
})
INPUT_KEYS = ("text", "text_b", "question", "context")
_WORDS = {"text": "one text ('text')", "pair": "a text pair ('text' and 'text_b')",
          "question_context": "a question and a context ('question' and 'context')"}


def form_of(row: Mapping[str, Any]) -> str | None:
    """The form a row's input keys make, or None when they make none (``text_b`` alone, ...)."""
    present = tuple(k for k in INPUT_KEYS if k in row)
    return next((form for form, keys in INPUT_FORMS.items() if keys == present), None)


def runs(rows: Sequence[Mapping[str, Any]], size: int | None = None) -> list[tuple[int, ...]]:
    """Positions of consecutive rows of the same form, at most ``size`` a run: what one task can
    encode (and pad) together. ``predict`` and the server batch rows so."""
    out: list[list[int]] = []
    for i, row in enumerate(rows):
        if out and len(out[-1]) != size and form_of(rows[out[-1][0]]) == form_of(row):
            out[-1].append(i)
        else:
            out.append([i])
    return [tuple(r) for r in out]


def describe_forms(forms: Sequence[str]) -> str:
    """``("text", "pair")`` -> "one text ('text') or a text pair ('text' and 'text_b')"."""
    return " or ".join(_WORDS[f] for f in forms)


def row_problem(row: Any) -> str | None:
    """What makes ``row`` unreadable by any task (one line naming the field), or None.

    Not an object; input keys that make no form; a field that is not a string, or is blank.
    """
    if not isinstance(row, Mapping):
        return f"an input must be an object with {describe_forms(tuple(INPUT_FORMS))}, not {type(row).__name__}"
    form = form_of(row)
    if form is None:
        present = [k for k in INPUT_KEYS if k in row]
        return (f"an input holds {describe_forms(tuple(INPUT_FORMS))}; this one has "
                f"{present if present else 'none of the fields ' + str(list(INPUT_KEYS))}")
    for key in INPUT_FORMS[form]:
        value = row[key]
        if not isinstance(value, str):
            return f"field {key!r} must be a string, not {type(value).__name__} {value!r}"[:200]
        if not value.strip():
            return f"field {key!r} is empty: there is nothing to predict"
    return None
