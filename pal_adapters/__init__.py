"""pal_adapters: Projected Attention Layers, low-rank adapters and LHUC for multi-task HF encoders."""

from .config import PRESETS, AdapterConfig, TaskConfig, resolve_adapter_config
from .inject import AdapterBank, get_bank, inject_adapters, remove_adapters
from .layouts import LAYOUTS, Layout
from .model import MultiTaskModel, MultiTaskOutput, add_pal
from .params import ParameterReport, freeze_backbone, parameter_report

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
    "add_pal",
    "freeze_backbone",
    "get_bank",
    "inject_adapters",
    "parameter_report",
    "remove_adapters",
    "resolve_adapter_config",
]
__version__ = "0.1.0"
