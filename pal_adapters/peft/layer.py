"""The core's ``AdapterBank`` as a PEFT tuner layer: one per model, its tasks are PEFT's adapters.

PEFT finds a method's layers by type (``BaseTunerLayer``) to list their status, switch, enable,
disable and delete adapters. The bank holds every adapter of the model and its hooks run them
(sites.py), so the bank is the one "layer": PEFT's active adapter becomes the bank's model-wide
routing (``set_task``), and disabling routes every row to no adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..inject import ATTRIBUTE, AdapterBank
from ..layouts import resolve_layout


class PeftAdapterBank(AdapterBank, BaseTunerLayer):
    """An ``AdapterBank`` speaking PEFT's layer protocol (adapters = the bank's tasks)."""

    adapter_layer_names: tuple[str, ...] = ()  # the tasks are the bank's own items, see _get_available_adapters

    def __init__(self, base: nn.Module, resolved):
        super().__init__(base, resolved)
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.merged_adapters: list[str] = []

    def _get_available_adapters(self) -> set[str]:
        return set(self.keys())

    def _route(self) -> None:
        """Model-wide routing from PEFT's state: the one active adapter, or none when disabled."""
        active = self.active_adapters
        self.set_task(None if self._disable_adapters or not active else active[0])

    def set_adapter(self, adapter_names: str | Sequence[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(f"pal adapters cannot be combined: set one adapter active, not {names}. To run several "
                             "tasks on one batch pass adapter_names=[...] per row to forward, or use "
                             "pal_adapters.MultiTaskModel")
        for name in names:
            self.check_task(name)
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
