"""Request bodies -> input rows, refusing anything malformed with a 4xx that names the field.

An input is a string (``{"text": s}``), ``{"text", "text_b"}`` or ``{"question", "context"}`` --
the rows ``pal-adapters predict`` reads. ``inputs`` is one input or a list of them.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ServeError, bad_input

Row = dict[str, str]
INPUT_KEYS = ("text", "text_b", "question", "context")


def parse_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The JSON object of a body: 413 over ``max_bytes``, 400 if not JSON, 422 if not an object."""
    if len(raw) > max_bytes:
        raise ServeError(413, f"body: {len(raw)} bytes is over the limit of {max_bytes} bytes", field="body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServeError(400, f"body: not valid JSON ({err})", field="body") from None
    if not isinstance(body, dict):
        raise bad_input("body", f"expected a JSON object, got {type(body).__name__}")
    return body


def check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_input(unknown[0], f"unknown field; this route reads {list(allowed)}")


def read_task(body: dict[str, Any], tasks: list[str]) -> str:
    """``body["task"]``: 422 if missing or not a string, 404 (listing the tasks) if unknown."""
    if "task" not in body:
        raise bad_input("task", f"missing; name one of {tasks}")
    task = body["task"]
    if not isinstance(task, str):
        raise bad_input("task", f"expected a string, got {type(task).__name__}")
    if task not in tasks:
        raise ServeError(404, f"task: unknown task {task!r}; this server's tasks: {tasks}", field="task")
    return task


def read_truncate(body: dict[str, Any], default: bool) -> bool:
    value = body.get("truncate", default)
    if not isinstance(value, bool):
        raise bad_input("truncate", f"expected true or false, got {value!r}")
    return value


def read_inputs(body: dict[str, Any], max_inputs: int) -> list[Row]:
    """``body["inputs"]`` as rows: 422 naming the field for anything malformed, 413 over ``max_inputs``."""
    if "inputs" not in body:
        raise bad_input("inputs", "missing; give a string, an object or a list of them")
    inputs = body["inputs"]
    if not isinstance(inputs, list):
        return [read_row(inputs, "inputs")]
    if not inputs:
        raise bad_input("inputs", "empty list; give at least one input")
    if len(inputs) > max_inputs:
        raise ServeError(413, f"inputs: {len(inputs)} inputs is over the limit of {max_inputs} per request",
                         field="inputs")
    return [read_row(item, f"inputs[{i}]") for i, item in enumerate(inputs)]


def read_row(item: Any, where: str) -> Row:
    """One input -> a row of strings; blank texts and unknown or mistyped fields are refused."""
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise bad_input(where, f"expected a string or an object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(INPUT_KEYS))
    if unknown:
        raise bad_input(f"{where}.{unknown[0]}", f"unknown field; an input holds {list(INPUT_KEYS)}")
    for key, value in item.items():
        if not isinstance(value, str):
            raise bad_input(f"{where}.{key}", f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise bad_input(f"{where}.{key}", "empty or blank text")
    if "text" in item and ("question" in item or "context" in item):
        raise bad_input(where, "give either 'text' (+ 'text_b') or 'question' + 'context', not both")
    if "text_b" in item and "text" not in item:
        raise bad_input(f"{where}.text_b", "given without 'text'; a pair is 'text' + 'text_b'")
    if "text" not in item and not ("question" in item and "context" in item):
        present = sorted(item) or "no fields"
        raise bad_input(where, f"needs 'text' (+ 'text_b') or both 'question' and 'context'; got {present}")
    return dict(item)
