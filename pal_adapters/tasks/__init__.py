"""The registry of task kinds: ``TaskConfig.type`` -> the ``TaskKind`` class that owns it.

Adding a kind = one module here with a ``TaskKind`` subclass (see ``base.py``) + one row below
(or ``register_kind(MyKind)`` from outside the package) + its tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import TaskKind
from .classification import ClassificationKind
from .extractive_qa import ExtractiveQAKind
from .labels import IGNORE_INDEX
from .multi_label import MultiLabelKind
from .ranking import RankingKind
from .regression import RegressionKind
from .token_classification import TokenClassificationKind

if TYPE_CHECKING:
    from ..config import TaskConfig

TASK_KINDS: dict[str, type[TaskKind]] = {
    ClassificationKind.name: ClassificationKind,
    RegressionKind.name: RegressionKind,
    MultiLabelKind.name: MultiLabelKind,
    RankingKind.name: RankingKind,
    TokenClassificationKind.name: TokenClassificationKind,
    ExtractiveQAKind.name: ExtractiveQAKind,
}


def register_kind(cls: type[TaskKind], *, replace: bool = False) -> type[TaskKind]:
    """Add ``cls`` to ``TASK_KINDS`` under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, TaskKind)):
        raise TypeError(f"{cls!r} is not a TaskKind subclass")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"{cls.__name__}.name={cls.name!r} must be a non-empty string")
    if cls.name in TASK_KINDS and TASK_KINDS[cls.name] is not cls and not replace:
        raise ValueError(f"task type {cls.name!r} is already registered to {TASK_KINDS[cls.name].__name__}")
    TASK_KINDS[cls.name] = cls
    return cls


def get_kind(name: Any) -> type[TaskKind]:
    """The kind class registered as ``name``; an unknown name raises, listing the valid ones."""
    if not isinstance(name, str) or name not in TASK_KINDS:
        raise ValueError(f"type={name!r} is not valid; choose one of {', '.join(map(repr, TASK_KINDS))}")
    return TASK_KINDS[name]


def kind_of(task: TaskConfig) -> TaskKind:
    """The kind object of a task, with the task's own options (``TaskConfig.options``)."""
    return get_kind(task.type)(task)


__all__ = ["IGNORE_INDEX", "TASK_KINDS", "TaskKind", "get_kind", "kind_of", "register_kind"]
