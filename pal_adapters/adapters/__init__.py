"""Adapter methods, one file each; ``TaskAdapter`` bundles what one task adds."""

from .common import ProjectedSelfAttention
from .lhuc import LHUC
from .low_rank import LowRank
from .methods import ADAPTER_METHODS, AdapterMethod, get_method, register_method
from .pal import PAL, PALFFN
from .task_adapter import TaskAdapter

__all__ = ["ADAPTER_METHODS", "LHUC", "PAL", "PALFFN", "AdapterMethod", "LowRank", "ProjectedSelfAttention",
           "TaskAdapter", "get_method", "register_method"]
