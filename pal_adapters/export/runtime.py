"""ONNX Runtime as a backend of ``predict``: an exported graph, its tasks, and their logits.

``OnnxRunner("all.onnx")`` reads the graph and the card beside it (``onnx.py``) and offers what
``pal_adapters.predict.predict_rows`` reads of a model — ``task_names``, ``tasks`` (the
``TaskConfig``s), ``check_task``, ``heads[task].kind`` — plus ``task_logits(tasks, inputs)``,
the logits ONNX Runtime computes where PyTorch would run ``model(task=...)`` / ``predict_all``.
So each task's kind still encodes the rows (windows, offsets) and describes the logits (labels,
entity spans, QA answers) exactly as it does for the PyTorch model::

    runner = OnnxRunner("out/all.onnx")
    predictions, skipped = runner.predict_rows(tokenizer, [{"text": "a fine film"}])

Nothing here imports PyTorch modules of the model; ``onnxruntime`` is imported when a runner is
made (``pip install "pal-adapters[onnx]"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..config import TaskConfig
from ..tasks import TaskKind, kind_of
from .onnx import GraphCard, card_path, require_onnx


def _onnxruntime():
    require_onnx(modules=("onnxruntime",))
    import onnxruntime

    return onnxruntime


class OnnxRunner:
    """An exported graph in an ONNX Runtime session, with the tasks of its card.

    Args:
        path: the ``.onnx`` file; its card is the ``.json`` beside it.
        providers: ONNX Runtime execution providers, in order of preference.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX graph {str(self.path)!r} does not exist")
        card = card_path(self.path)
        if not card.is_file():
            raise FileNotFoundError(f"{self.path} has no task card beside it ({card}); export it with "
                                    "pal_adapters.export (or pal-adapters export)")
        self.card = GraphCard.read(card)
        self.tasks: dict[str, TaskConfig] = {t: TaskConfig.from_dict(d) for t, d in self.card.tasks.items()}
        self.kinds: Mapping[str, TaskKind] = MappingProxyType({t: kind_of(c) for t, c in self.tasks.items()})
        # predict_rows reads model.heads[task].kind: the heads here are just their kinds
        self.heads = MappingProxyType({t: SimpleNamespace(kind=k) for t, k in self.kinds.items()})
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def check_task(self, name: str) -> None:
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; the graph {self.path.name} answers: {self.task_names}")

    def parameters(self):
        """No parameters: ``predict_rows`` then keeps its inputs on the CPU, where the session reads them."""
        yield torch.empty(0)

    def task_logits(self, tasks: Sequence[str], inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: logits}`` for one encoded batch (``(B, T)`` tensors), the shapes PyTorch gives."""
        for t in tasks:
            self.check_task(t)
        feeds = self._feeds(inputs)
        values = self.session.run([self.card.outputs[t] for t in tasks], feeds)
        return {t: torch.from_numpy(v) for t, v in zip(tasks, values, strict=True)}

    def _feeds(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The graph's inputs as int64 arrays. Token types the graph does not take must be 0 (the
        encoder has one type); those it takes default to 0, as the encoder's own forward does."""
        arrays = {k: np.ascontiguousarray(torch.as_tensor(v).cpu().numpy(), dtype=np.int64)
                  for k, v in inputs.items() if v is not None}
        extra = sorted(set(arrays) - set(self.input_names))
        if any(k != "token_type_ids" or arrays[k].any() for k in extra):
            raise ValueError(f"inputs {extra} are not inputs of {self.path.name} (it takes {self.input_names})")
        missing = [n for n in self.input_names if n not in arrays and n != "token_type_ids"]
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {missing}; got {sorted(arrays)}")
        if "token_type_ids" in self.input_names and "token_type_ids" not in arrays:
            arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
        return {n: arrays[n] for n in self.input_names}

    def predict_rows(self, tokenizer: Any, rows: Sequence[Mapping[str, Any]], tasks: Sequence[str] | None = None,
                     max_length: int | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """``pal_adapters.predict.predict_rows`` with ONNX Runtime computing the logits."""
        from ..predict import predict_rows

        return predict_rows(self, tokenizer, rows, tasks, max_length, logits_fn=onnx_logits)


def onnx_logits(runner: OnnxRunner, tasks: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``predict_rows``' ``logits_fn`` for a runner: ``runner.task_logits(tasks, inputs)``."""
    return runner.task_logits(tasks, inputs)
