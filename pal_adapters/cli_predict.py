"""``pal-adapters predict``: inputs in, one JSON line of per-task predictions out.

Each output line is the input object plus ``"predictions": {task: prediction}`` as
``pal_adapters.predict.predict_rows`` makes them (what a prediction is per kind is listed there).
When no task is named, tasks that cannot read an input (a pair for a task trained on single texts,
QA without a question, ...) are left out and listed under ``"skipped"`` with the reason; a named
task that cannot read it, or an input no task can read (an empty text), is an error.

With ``--backend onnx`` the model is a graph written by ``pal-adapters export`` (``load_graph``):
ONNX Runtime computes the logits, and each task's kind encodes and describes exactly as for the
PyTorch model (``pal_adapters.export.runtime``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model import MultiTaskModel
from .predict import Logits, predict_rows, task_logits
from .tasks.rows import row_problem, runs
from .training.report import to_jsonable

if TYPE_CHECKING:
    from .export import OnnxRunner


def read_inputs(texts: Sequence[str], input_file: str | None) -> list[dict[str, Any]]:
    """``TEXT [TEXT_B]`` from the command line, or the objects of a JSONL file (``text`` [+ ``text_b``],
    or ``question`` + ``context``)."""
    if bool(texts) == bool(input_file):
        raise ValueError("give either TEXT [TEXT_B] or --input FILE.jsonl (one of them)")
    if texts:
        if len(texts) > 2:
            raise ValueError(f"got {len(texts)} texts {list(texts)}; give TEXT or TEXT TEXT_B (quote each text)")
        return [dict(zip(("text", "text_b"), texts, strict=False))]
    path = Path(input_file)
    if not path.is_file():
        raise FileNotFoundError(f"input file {input_file!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{input_file}, line {number}: invalid JSON ({err.msg})") from None
        problem = row_problem(row)
        if problem:
            raise ValueError(f"{input_file}, line {number}: {problem}")
        rows.append(row)
    if not rows:
        raise ValueError(f"input file {input_file!r} holds no input rows")
    return rows


def load_graph(graph: str, model_name: str | None) -> tuple[OnnxRunner, Any]:
    """An exported graph in ONNX Runtime and the tokenizer of ``model_name`` (default: the base
    model its card records, the name the model was loaded by when it was exported)."""
    from transformers import AutoTokenizer

    from .export import OnnxRunner
    from .model_path import resolve_model_path

    if Path(graph).is_dir():
        raise ValueError(f"--backend onnx reads an exported graph, and {graph!r} is a folder; export it first: "
                         f"pal-adapters export {graph} --all-tasks -o all.onnx")
    runner = OnnxRunner(graph)
    name = model_name or runner.card.base_model
    if not name:
        raise ValueError(f"the card of {graph} records no base model to take the tokenizer from; pass --model")
    location = resolve_model_path(name)
    if Path(location).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
    return runner, AutoTokenizer.from_pretrained(location)


def predict_lines(model: MultiTaskModel | OnnxRunner, tokenizer: Any, rows: list[dict[str, Any]],
                  tasks: list[str] | None, batch_size: int, max_length: int | None = None,
                  logits_fn: Logits = task_logits) -> Iterator[str]:
    """One JSON line per row, in order; ``logits_fn`` computes the logits (``onnx_logits`` for a graph)."""
    for positions in runs(rows, batch_size):
        batch = [rows[i] for i in positions]
        predictions, skipped = predict_rows(model, tokenizer, batch, tasks, max_length, logits_fn)
        for row, prediction in zip(batch, predictions, strict=True):
            extra = {"skipped": skipped} if skipped else {}
            yield json.dumps(to_jsonable({**row, "predictions": prediction, **extra}))
