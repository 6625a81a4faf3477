"""pal_adapters: Projected Attention Layers, low-rank adapters and LHUC for multi-task HF encoders.

The public API below is imported on first use (PEP 562), so ``import pal_adapters`` — and the
``pal-adapters`` command's ``--help`` — cost no torch or transformers import until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "config", "AdapterConfig": "config", "TaskConfig": "config", "resolve_adapter_config": "config",
    "AdapterBank": "inject", "get_bank": "inject", "inject_adapters": "inject", "remove_adapters": "inject",
    "LAYOUTS": "layouts", "Layout": "layouts",
    "MultiTaskModel": "model", "MultiTaskOutput": "model", "add_pal": "model",
    "ParameterReport": "params", "freeze_backbone": "params", "parameter_report": "params",
    "predict_rows": "predict",
    "TaskView": "task_view", "task_model": "task_view",
}
__all__ = [
    "LAYOUTS",
    "PRESETS",
    "AdapterBank",
    "AdapterConfig",
    "Layout",
    "MultiTaskModel",
    "MultiTaskOutput",
    "ParameterReport",
    "TaskConfig",
    "TaskView",
    "add_pal",
    "freeze_backbone",
    "get_bank",
    "inject_adapters",
    "parameter_report",
    "predict_rows",
    "remove_adapters",
    "resolve_adapter_config",
    "task_model",
]
assert sorted(__all__) == sorted(_EXPORTS), "every public name has one module it is imported from"

if TYPE_CHECKING:
    from .config import PRESETS, AdapterConfig, TaskConfig, resolve_adapter_config
    from .inject import AdapterBank, get_bank, inject_adapters, remove_adapters
    from .layouts import LAYOUTS, Layout
    from .model import MultiTaskModel, MultiTaskOutput, add_pal
    from .params import ParameterReport, freeze_backbone, parameter_report
    from .predict import predict_rows
    from .task_view import TaskView, task_model


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pal_adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
