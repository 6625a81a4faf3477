"""Freezing and counting parameters; every adapter parameter name contains ``pal_adapters.``."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .inject import ATTRIBUTE

PREFIX = ATTRIBUTE + "."


def is_adapter_parameter(name: str) -> bool:
    return name.startswith(PREFIX) or f".{PREFIX}" in name


def task_of(name: str) -> str:
    """The task a ``...pal_adapters.<task>.<rest>`` parameter name belongs to."""
    return name.split(PREFIX, 1)[1].split(".", 1)[0]


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) every parameter of ``model`` that is not an adapter."""
    for name, param in model.named_parameters():
        if not is_adapter_parameter(name):
            param.requires_grad_(not frozen)


def _unique(named) -> list[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for name, p in named:
        if id(p) not in seen:  # tied weights count once
            seen.add(id(p))
            out.append((name, p))
    return out


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts; ``multiple_of_base`` is the paper's "1.13x" (total / backbone)."""

    total: int
    trainable: int
    backbone: int
    adapters: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)

    @property
    def multiple_of_base(self) -> float:
        return self.total / self.backbone if self.backbone else float("nan")

    def __str__(self) -> str:
        lines = [f"{'backbone':<24}{self.backbone:>14,}"]
        for task in sorted(set(self.adapters) | set(self.heads)):
            a, h = self.adapters.get(task, 0), self.heads.get(task, 0)
            lines.append(f"{'task ' + task:<24}{a:>14,} adapter {h:>10,} head")
        lines.append(f"{'total':<24}{self.total:>14,}  ({self.multiple_of_base:.3f}x the backbone)")
        lines.append(f"{'trainable':<24}{self.trainable:>14,}  ({100 * self.trainable / self.total:.2f}%)")
        return "\n".join(lines)


def parameter_report(model: nn.Module, head_prefix: str | None = None) -> ParameterReport:
    """Count ``model``'s parameters by role: backbone, per-task adapters, per-task heads.

    Heads are parameters named ``<head_prefix>.<task>.…`` (the multi-task model uses ``heads``).
    """
    adapters: dict[str, int] = {}
    heads: dict[str, int] = {}
    backbone = total = trainable = 0
    for name, p in _unique(model.named_parameters()):
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        if is_adapter_parameter(name):
            adapters[task_of(name)] = adapters.get(task_of(name), 0) + n
        elif head_prefix and name.startswith(head_prefix + "."):
            task = name[len(head_prefix) + 1:].split(".", 1)[0]
            heads[task] = heads.get(task, 0) + n
        else:
            backbone += n
    return ParameterReport(total, trainable, backbone, adapters, heads)
