"""The core's ``AdapterBank`` as a PEFT tuner layer: one per model, its tasks are PEFT's adapters.

PEFT finds a method's layers by type (``BaseTunerLayer``) to list their status, switch, enable,
disable and delete adapters. The bank holds every adapter of the model and its hooks run them
(sites.py), so the bank is the one "layer": PEFT's active adapter becomes the bank's model-wide
routing (``set_task``), and disabling routes every row to no adapter.

PEFT's generic code reads a layer's adapters as ``getattr(layer, name)[adapter]`` for each name in
``adapter_layer_names`` (``get_layer_status``, ``set_requires_grad``); the bank *is* that dict, so
its one adapter-layer name, ``task_adapters``, is the bank itself. The bank wraps no base layer:
``weight``/``bias`` (which ``BaseTunerLayer`` forwards to a base layer) do not exist on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..adapters import TaskAdapter
from ..config import AdapterConfig
from ..inject import ATTRIBUTE, AdapterBank
from ..layouts import resolve_layout

BASE = "__base__"  # an ``adapter_names`` entry: that row runs without adapters (PEFT's convention)
RESERVED = frozenset({"weight", "bias", "base_layer", BASE})  # names PEFT's code reads on a tuner layer
UPCAST = frozenset({torch.float16, torch.bfloat16})  # what autocast_adapter_dtype keeps in fp32


class PeftAdapterBank(AdapterBank, BaseTunerLayer):
    """An ``AdapterBank`` speaking PEFT's layer protocol (adapters = the bank's tasks)."""

    adapter_layer_names: tuple[str, ...] = ("task_adapters",)

    def __init__(self, base: nn.Module, resolved):
        super().__init__(base, resolved)
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.adapter_dtypes: dict[str, torch.dtype] = {}  # the dtype each task's adapters are kept in

    @property
    def task_adapters(self) -> PeftAdapterBank:
        return self

    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError(f"{type(self).__name__} wraps no base layer, so it has no weight (its adapters do)")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError(f"{type(self).__name__} wraps no base layer, so it has no bias (its adapters do)")

    # ---- adapters -------------------------------------------------------------------------
    def check_new_name(self, name: str) -> None:
        if name in RESERVED:
            raise ValueError(f"adapter name {name!r} is reserved by PEFT; choose another than {sorted(RESERVED)}")
        super().check_new_name(name)

    def add_task(self, name: str, config: AdapterConfig | str | dict | None = None,
                 device: torch.device | str | None = None) -> TaskAdapter:
        adapter = super().add_task(name, config, device)
        self.adapter_dtypes[name] = next(adapter.parameters()).dtype
        return adapter

    def remove_task(self, name: str) -> None:
        super().remove_task(name)
        self.adapter_dtypes.pop(name, None)

    def upcast(self, name: str) -> None:
        """Keep adapter ``name`` in fp32 if it is fp16/bf16 (PEFT's ``autocast_adapter_dtype``)."""
        self.check_task(name)
        if self.adapter_dtypes[name] in UPCAST:
            self[name].to(dtype=torch.float32)
            self.adapter_dtypes[name] = torch.float32

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """After PEFT assigned loaded tensors (``low_cpu_mem_usage``): adapter ``adapter_name`` on the
        encoder's device (or ``device``) and in its kept dtype. Adapters still on meta stay there."""
        adapter = self[adapter_name]
        if any(p.is_meta for p in adapter.parameters()):
            return
        ref = next((p for p in self._base_ref[0].parameters() if p.is_floating_point()), None)
        target = device if device is not None else (ref.device if ref is not None else None)
        adapter.to(device=target, dtype=self.adapter_dtypes[adapter_name])

    def _get_available_adapters(self) -> set[str]:
        return set(self.keys())

    def check_names(self, adapter_names: str | Sequence[str]) -> list[str]:
        """``adapter_names`` as a list, each one an adapter of this bank (else a ``KeyError`` naming them)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in names:
            self.check_task(name)
        return names

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        for name in self.check_names(adapter_names):
            self[name].requires_grad_(requires_grad)

    # ---- switching ------------------------------------------------------------------------
    def check_active(self, adapter_names: str | Sequence[str]) -> list[str]:
        """The adapters to make active: at most one, and known (raises before anything changes)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(f"pal adapters cannot be combined: set one adapter active, not {names}. To run several "
                             "tasks on one batch pass adapter_names=[...] per row to forward, or use "
                             "pal_adapters.MultiTaskModel")
        return self.check_names(names)

    def _route(self) -> None:
        """Model-wide routing from PEFT's state: the one active adapter, or none when disabled."""
        active = self.active_adapters
        self.set_task(None if self._disable_adapters or not active else active[0])

    def set_adapter(self, adapter_names: str | Sequence[str], inference_mode: bool = False) -> None:
        names = self.check_active(adapter_names)
        for name, adapter in self.items():
            adapter.requires_grad_(name in names and not inference_mode)
        self._active_adapter = names
        self._route()

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled
        if enabled:
            self.set_adapter(self.active_adapters)
        else:
            for adapter in self.values():
                adapter.requires_grad_(False)
            self._route()

    def delete_adapter(self, adapter_name: str) -> None:
        self.remove_task(adapter_name)
        if adapter_name in self.active_adapters:
            remaining = sorted(self.keys())
            self.set_adapter(remaining[:1])

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("pal adapters cannot be merged in place and kept; use merge_and_unload() "
                         "(kind='lhuc' only)")

    def unmerge(self) -> None:
        return None  # nothing is ever merged in place


def attach_bank(model: nn.Module) -> PeftAdapterBank:
    """``model``'s bank, created empty and attached on first use (the core's layouts and hooks).

    The bank is registered on ``model`` itself (``model.pal_adapters``), like ``inject_adapters``
    does, so PEFT's state-dict keys are ``base_model.model.pal_adapters.*`` for every family.
    """
    bank = model._modules.get(ATTRIBUTE)
    if isinstance(bank, PeftAdapterBank):
        return bank
    if bank is not None:
        raise ValueError(f"{type(model).__name__} already has pal_adapters added by add_pal/inject_adapters; "
                         "use those, or PEFT on a model without them (remove_adapters(model) first)")
    base, resolved = resolve_layout(model)
    bank = PeftAdapterBank(base, resolved)
    model.add_module(ATTRIBUTE, bank)
    bank.attach()
    return bank
