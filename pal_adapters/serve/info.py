"""What ``GET /info`` and ``GET /tasks`` show: versions, base model, limits; each task's definition."""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from typing import Any

from .settings import ServeSettings


def task_table(catalog: Mapping[str, Any], adapter: Any, limit: Callable[[str], int]) -> list[dict[str, Any]]:
    """One entry per task: name, kind, labels, token limit and adapter config."""
    out = []
    for name, entry in catalog.items():
        task = entry.config
        out.append({"name": name, "type": task.type, "num_labels": task.num_labels,
                    "labels": list(task.labels) if task.labels else None, "max_length": limit(name),
                    "inputs": getattr(task, "inputs", None), "options": dict(entry.kind.options),
                    "adapter": (task.adapter or adapter).to_dict()})
    return out


def static_info(model: Any) -> dict[str, Any]:
    """What does not change while serving: versions, base model, device (read once, at start)."""
    import torch
    import transformers

    from .. import __version__

    base = getattr(model, "base_fingerprint", {}) or {}
    adapters = sum(p.numel() for n, p in model.backbone.named_parameters() if "pal_adapters." in n)
    return {
        "versions": {"pal_adapters": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "base_model": {"name_or_path": base.get("name_or_path"), "model_type": base.get("model_type"),
                       "num_parameters": sum(p.numel() for p in model.backbone.parameters()) - adapters},
        "device": str(next(model.parameters()).device),
    }


def server_info(static: dict[str, Any], settings: ServeSettings, tasks: list[str], queued: int) -> dict[str, Any]:
    """``static_info`` plus the tasks being served, the limits and the queue length."""
    return {**static, "tasks": tasks, "limits": settings.limits(), "queued": queued}
