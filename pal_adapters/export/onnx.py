"""ONNX export of one task, or of all tasks at once, with the task definitions beside the graph.

``export_task(model, "ner", "ner.onnx")`` writes one graph: the backbone, that task's adapters
and its head, with dynamic batch and sequence axes; output ``logits``. ``export_all_tasks(model,
"all.onnx")`` writes the ``predict_all`` graph: one set of inputs, one output per task, named by
the task, the layers below the lowest adapted depth computed once. Beside either graph,
``<name>.json`` (a ``GraphCard``) records its inputs, which output is which task's, and every
task's ``TaskConfig`` (kind, labels, options, max_length, ...), which is all that ONNX Runtime
needs besides a tokenizer to give ``predict``'s answers (``runtime.py``).

Exporters: ``"torchscript"`` (the default) traces the model's own forward and exports every
supported family in one or two seconds; ``"dynamo"`` (``torch.export``) gives the same graph
in 10-30 s. Both were checked against PyTorch on the nine families of ``tests/helpers.py``.

Both files are written atomically (a temporary sibling renamed into place, ``atomic.py``), the
graph before its card: a reader never sees half a graph, and a killed export leaves the previous
pair. The graph is one self-contained file (weights inside), so it must stay under protobuf's
2 GB (a BERT-large is 1.3 GB).
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..atomic import atomic_file, default_mode, remove_stale_files
from ..model import MultiTaskModel, inference
from .graphs import AllTasksGraph, TaskGraph, example_inputs, graph_inputs

Exporter = Literal["torchscript", "dynamo"]
CARD_FORMAT, CARD_VERSION = "pal_adapters.onnx", 1
AXES = {0: "batch", 1: "sequence"}
DEFAULT_OPSET = 17
EXTRA_MODULES = {"torchscript": ("onnx",), "dynamo": ("onnx", "onnxscript")}  # what each exporter imports


@dataclass
class GraphCard:
    """What the JSON beside a graph holds. ``outputs``: task -> the graph output with its logits."""

    graph: str  # the .onnx file's name, in the card's folder
    inputs: list[str]
    outputs: dict[str, str]
    tasks: dict[str, dict[str, Any]]  # task -> TaskConfig.to_dict()
    all_tasks: bool
    base_model: str | None = None
    exporter: str = "torchscript"
    opset: int = DEFAULT_OPSET
    format: str = CARD_FORMAT
    version: int = CARD_VERSION
    versions: dict[str, str] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        with atomic_file(path, "w") as f:
            f.write(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> GraphCard:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ValueError(f"{path} is not a pal_adapters graph card (format {CARD_FORMAT!r})")
        if data.get("version") != CARD_VERSION:
            raise ValueError(f"{path}: card version {data.get('version')!r}; this pal_adapters reads {CARD_VERSION}")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def card_path(graph: str | Path) -> Path:
    """``out/ner.onnx`` -> ``out/ner.json``."""
    return Path(graph).with_suffix(".json")


def export_task(model: MultiTaskModel, task: str, path: str | Path, *, exporter: Exporter = "torchscript",
                opset: int = DEFAULT_OPSET) -> GraphCard:
    """One task's graph at ``path`` (output ``logits``) and its card beside it."""
    names = graph_inputs(model)
    return _write(model, TaskGraph(model, task, names), Path(path), names, {task: "logits"}, exporter, opset)


def export_all_tasks(model: MultiTaskModel, path: str | Path, tasks: Sequence[str] | None = None, *,
                     exporter: Exporter = "torchscript", opset: int = DEFAULT_OPSET) -> GraphCard:
    """The ``predict_all`` graph of ``tasks`` (default: all) at ``path``: one output per task."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks={tasks!r} is one string; pass a list of task names")
    tasks = list(tasks) if tasks is not None else model.task_names
    if not tasks:
        raise ValueError(f"no tasks to export; this model's tasks: {model.task_names}")
    names = graph_inputs(model)
    outputs = {t: t for t in tasks}
    return _write(model, AllTasksGraph(model, tasks, names), Path(path), names, outputs, exporter, opset)


def _write(model: MultiTaskModel, graph: nn.Module, path: Path, names: tuple[str, ...], outputs: dict[str, str],
           exporter: Exporter, opset: int) -> GraphCard:
    if path.suffix != ".onnx":
        raise ValueError(f"output path {str(path)!r} must end in .onnx (the task card goes beside it as .json)")
    if exporter not in EXTRA_MODULES:
        raise ValueError(f"exporter={exporter!r}; choose one of {sorted(EXTRA_MODULES)}")
    require_onnx(exporter)
    path.parent.mkdir(parents=True, exist_ok=True)
    with inference(model):
        _export_atomically(graph, example_inputs(model, names), path, names, list(outputs.values()), exporter, opset)
    card = GraphCard(graph=path.name, inputs=list(names), outputs=outputs,
                     tasks={t: model.tasks[t].to_dict() for t in outputs}, all_tasks=isinstance(graph, AllTasksGraph),
                     base_model=getattr(model.config, "name_or_path", None) or None, exporter=exporter, opset=opset,
                     versions=_versions())
    card.write(card_path(path))
    return card


def _export_atomically(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: tuple[str, ...],
                       outputs: list[str], exporter: Exporter, opset: int) -> None:
    """``_export`` into ``.<name>.<pid>.<random>.tmp`` beside ``path`` (``atomic_file``'s naming, so
    a killed export's leftover is removed by the next write of ``path``), then renamed over ``path``."""
    remove_stale_files(path, only_dead=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _export(graph, args, tmp, names, outputs, exporter, opset)
        os.chmod(tmp, default_mode(directory=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export(graph: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: tuple[str, ...],
            outputs: list[str], exporter: Exporter, opset: int) -> None:
    """Run one exporter with batch and sequence dynamic on every input (and output)."""
    graph.eval()
    common = dict(input_names=list(names), output_names=outputs, opset_version=opset)
    traced = graph(*args)
    out_axes = {n: _output_axes(t) for n, t in zip(outputs, traced if isinstance(traced, tuple) else (traced,),
                                                    strict=True)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks become constants
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # no negative indices here
        if exporter == "torchscript":
            torch.onnx.export(graph, args, str(path), dynamo=False, **common,
                              dynamic_axes={**{n: AXES for n in names}, **out_axes})
        else:
            torch.onnx.export(graph, args, str(path), dynamo=True, verbose=False, external_data=False, **common,
                              dynamic_shapes=(tuple(AXES for _ in names),))  # forward(*tensors): one argument


def require_onnx(exporter: str = "torchscript", modules: Sequence[str] | None = None) -> None:
    """Raise ``ImportError`` naming the onnx extra when a module it provides is not installed
    (only a missing module: a module that fails inside its own imports raises as it is)."""
    wanted = modules if modules is not None else EXTRA_MODULES.get(exporter, ())
    missing = []
    for name in wanted:
        try:
            __import__(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export and the ONNX backend need {' and '.join(missing)} (not installed): "
                          'pip install "pal-adapters[onnx]"')


def _output_axes(logits: torch.Tensor) -> dict[int, str]:
    """``(B, C)`` / ``(B,)``: the batch is dynamic; ``(B, T, C)`` (token-level kinds): T too."""
    return AXES if logits.dim() == 3 else {0: AXES[0]}


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"pal_adapters": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
