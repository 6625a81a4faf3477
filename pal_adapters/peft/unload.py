"""``unload()`` / ``merge_and_unload()`` of the ``pal`` method as one step that fully happens or not at all.

PEFT's generic ``BaseTuner._unload_and_optionally_merge`` walks every module and, through
``_replace_module``, copies ``weight``/``bias`` onto each module it puts back; a
``modules_to_save`` head without them (``RobertaClassificationHead``: dense + out_proj) raises
half-way, after earlier modules were changed. Here the only modules PEFT wrapped are its auxiliary
ones (``modules_to_save``, trainable tokens: the bank runs from hooks and wraps nothing), so
unloading is: fold LHUC into the norms (merging only), detach the bank, put back each auxiliary
module's original (or, merging, its active copy), drop ``peft_config``. A ``Journal`` records each
change before it is made and undoes them all, newest first, when any step fails (of any type,
KeyboardInterrupt included): the model is then as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from ..inject import ATTRIBUTE
from ..merge import folded_norms, write_norms
from .layer import PeftAdapterBank

Undo = Callable[[], None]


class Journal:
    """Undo steps of one unload, run newest first if it fails."""

    def __init__(self) -> None:
        self.steps: list[Undo] = []

    def record(self, undo: Undo) -> None:
        self.steps.append(undo)

    def rollback(self) -> None:
        for undo in reversed(self.steps):
            undo()


@contextmanager
def undone_on_failure() -> Iterator[Journal]:
    journal = Journal()
    try:
        yield journal
    except BaseException:
        journal.rollback()
        raise


def auxiliary_modules(model: nn.Module) -> list[tuple[nn.Module, str, AuxiliaryTrainingWrapper]]:
    """``(parent, child name, wrapper)`` of each outermost auxiliary wrapper (``modules_to_save`` ...)."""
    found, inside = [], set()
    for name, module in model.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper) and not any(name.startswith(p + ".") for p in inside):
            inside.add(name)
            parent_name, _, child = name.rpartition(".")
            found.append((model.get_submodule(parent_name), child, module))
    return found


def unload_model(model: nn.Module, bank: PeftAdapterBank, merge_name: str | None, safe_merge: bool,
                 adapter_names: list[str] | None) -> nn.Module:
    """Return ``model`` without the bank, its hooks and PEFT's wrappers; ``merge_name``: the LHUC
    adapter folded in first. Either everything happens or, on any failure, nothing."""
    wrappers = auxiliary_modules(model)
    with undone_on_failure() as journal:
        if merge_name is not None:
            _fold(journal, bank, merge_name, safe_merge)
        bank.detach()
        journal.record(bank.attach)
        delattr(model, ATTRIBUTE)
        journal.record(lambda: model.add_module(ATTRIBUTE, bank))
        for parent, child, wrapper in wrappers:
            original = wrapper.unload_and_optionally_merge_module(
                merge=merge_name is not None, safe_merge=safe_merge, adapter_names=adapter_names)
            setattr(parent, child, original)
            journal.record(lambda parent=parent, child=child, wrapper=wrapper: setattr(parent, child, wrapper))
        if "peft_config" in model.__dict__:  # cleaned up as PEFT does: a later get_peft_model starts afresh
            config = model.__dict__.pop("peft_config")
            journal.record(lambda: setattr(model, "peft_config", config))
    return model


def _fold(journal: Journal, bank: PeftAdapterBank, name: str, safe_merge: bool) -> None:
    """Fold LHUC ``name`` into the norms, recording their old values (``(d_m,)`` each) first."""
    layers = bank._base_ref[0].get_submodule(bank.resolved.layout.layers)
    folded = folded_norms(bank, name, layers, safe_merge)
    saved = [(norm, norm.weight.detach().clone(), None if norm.bias is None else norm.bias.detach().clone())
             for norm, _, _ in folded]
    journal.record(lambda: write_norms(saved))
    write_norms(folded)

