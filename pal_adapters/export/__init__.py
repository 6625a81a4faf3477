"""Take a task anywhere: ONNX graphs of one task or of all tasks, and ONNX Runtime as a backend.

- ``export_task(model, task, "t.onnx")`` / ``export_all_tasks(model, "all.onnx")``: the graphs,
  each with its ``GraphCard`` (``t.json``: inputs, outputs per task, the tasks' definitions);
- ``OnnxRunner("all.onnx")``: ONNX Runtime over a graph, usable wherever ``predict_rows`` is.

``import pal_adapters`` does not import this package; this package imports ``onnxruntime`` only
when a runner is made. The transformers-native view of one task is ``pal_adapters.task_view``.
"""

from .onnx import GraphCard, card_path, export_all_tasks, export_task, require_onnx
from .runtime import OnnxRunner, onnx_logits

__all__ = ["GraphCard", "OnnxRunner", "card_path", "export_all_tasks", "export_task", "onnx_logits", "require_onnx"]
