"""Adapter methods, one file each; ``TaskAdapter`` bundles what one task adds."""

from .common import ProjectedSelfAttention
from .lhuc import LHUC
from .low_rank import LowRank
from .pal import PAL, PALFFN
from .task_adapter import TaskAdapter

__all__ = ["LHUC", "PAL", "PALFFN", "LowRank", "ProjectedSelfAttention", "TaskAdapter"]
