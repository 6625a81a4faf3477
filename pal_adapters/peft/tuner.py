"""``PalPeftModel``: the PEFT tuner of the ``pal`` method, a thin adapter over the core.

PEFT's ``BaseTuner`` expects to replace target modules with wrapped ones; PAL, low-rank and LHUC
instead run from forward hooks (sites.py) placed by the encoder's layout (layouts.py), and keep a
task's V^E/V^D shared across its layers (like VeRA's ``vera_A``/``vera_B``). So this tuner
overrides the injection, switching, deletion, merging and state-dict hooks of ``BaseTuner`` and
delegates each to the core's ``AdapterBank`` (``PeftAdapterBank``, layer.py).

Prefix: PEFT finds a method's parameters by ``prefix in name`` in places (the missing-key report of
``load_adapter``, transformers' adapter-key renaming, tests of trainability), so the prefix is
``pal_adapters``, the module name every adapter parameter is under (and no other parameter is):
no name changes for it. Two consequences of PEFT's substring tests: an adapter name that is part
of ``pal_adapters`` (``"a"``, ``"pal"``) gets PEFT's "should not be contained in the prefix"
warning, and the low-level ``peft.functional.delete_adapter(..., prefix=...)`` skips the bank
(``PeftModel.delete_adapter`` is overridden here and deletes it).

Unloading and merging (unload.py) change the model in one step that is undone on any failure.

State-dict keys: the model key ``base_model.model.pal_adapters.<adapter>.<rest>`` is saved as
``base_model.model.pal_adapters.<rest>`` (``<rest>`` as in a ``TaskAdapter``'s state dict, e.g.
``ts.down.weight``, ``ts.inner.3.qkv.weight``, ``lhuc.theta.3``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, _delete_auxiliary_adapter
from peft.utils.other import AuxiliaryTrainingWrapper, set_additional_trainable_modules
from torch import nn

from ..inject import ATTRIBUTE
from ..io import AdapterLoadError
from ..merge import check_mergeable
from ..routing import Routing, Segment
from .layer import BASE, PeftAdapterBank, attach_bank
from .unload import unload_model

PREFIX = ATTRIBUTE  # PEFT's per-method prefix: in every adapter parameter's name, in no other


class PalPeftModel(BaseTuner):
    """Creates PAL / PAL-FFN / low-rank / LHUC adapters through PEFT (``get_peft_model``)."""

    prefix: str = PREFIX
    tuner_layer_cls = PeftAdapterBank
    uses_shared_state = True  # V^E/V^D are shared across layers: inject_adapter_in_model is refused
    target_module_mapping: dict = {}

    # ---- injection ------------------------------------------------------------------------
    @property
    def bank(self) -> PeftAdapterBank:
        return self.model._modules[ATTRIBUTE]

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict | None = None) -> None:
        """Add ``adapter_name``'s adapters (identity at init) as a task of the model's bank;
        ``low_cpu_mem_usage``: created empty on the meta device, for weights loaded next."""
        config = self.peft_config[adapter_name]
        bank = attach_bank(model)
        bank.add_task(adapter_name, config.adapter_config, device="meta" if low_cpu_mem_usage else None)
        self._mark_only_adapters_as_trainable(model)
        bank.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        set_additional_trainable_modules(model=model, peft_config=config, model_config=self.get_model_config(self),
                                         adapter_name=adapter_name,
                                         activate_adapter=adapter_name in self.active_adapters)

    def _create_and_replace(self, *args, **kwargs) -> None:  # BaseTuner's abstract hook: nothing is replaced
        raise NotImplementedError("pal adapters are added by inject_adapter, not by replacing modules")

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        """Freeze everything but the bank and PEFT's auxiliary modules (``modules_to_save``)."""
        keep = {n for n, m in model.named_modules() if isinstance(m, (PeftAdapterBank, AuxiliaryTrainingWrapper))}
        for name, param in model.named_parameters():
            if not any(name.startswith(k + ".") for k in keep):
                param.requires_grad_(False)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """``autocast_adapter_dtype`` (PEFT's default): fp16/bf16 adapters are kept in fp32, as PEFT
        does (optimizer updates in bf16 lose precision); the hooks compute them in fp32 and add
        their output in the encoder's dtype. ``False``: they keep the encoder's dtype."""
        if autocast_adapter_dtype:
            self.bank.upcast(adapter_name)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        """Put ``new_module`` in place of ``child``. PEFT's version copies ``weight``/``bias`` onto it,
        which modules without them (``RobertaClassificationHead``) lack; nothing here needs that."""
        setattr(parent, child_name, new_module)

    # ---- switching ------------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Checked before anything switches: the bank takes one known adapter (``modules_to_save``
        copies, switched by PEFT too, must not move to a name the bank then refuses)."""
        self.bank.check_active(adapter_name)
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """As PEFT's, but an unknown adapter name raises (naming the adapters) instead of doing nothing."""
        self.bank.check_names(adapter_names)
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist; adapters: {sorted(self.peft_config)}")
        del self.peft_config[adapter_name]
        self.bank.delete_adapter(adapter_name)
        self.active_adapter = self.bank.active_adapters[:]
        _delete_auxiliary_adapter(self.model, adapter_name=adapter_name, new_active_adapters=self.active_adapter)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """``forward(..., adapter_names=[...])``: row i uses adapter ``adapter_names[i]``."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        routing = self._mixed_routing(list(adapter_names))
        handles = [m.register_forward_pre_hook(partial(_pass_adapter_names, adapter_names), with_kwargs=True)
                   for m in self.model.modules() if isinstance(m, AuxiliaryTrainingWrapper)]
        try:
            with self.bank.router.routed(routing):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _mixed_routing(self, adapter_names: list[str]) -> Routing:
        """One segment per run of equal names (the core runs each adapter on its rows' slice); rows
        named ``"__base__"`` run the bare backbone, as in PEFT."""
        if self.model.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode; call model.eval() first")
        unknown = sorted(set(adapter_names) - set(self.bank.keys()) - {BASE})
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}; "
                             f"adapters: {sorted(self.bank.keys())}")
        segments, start = [], 0
        for i in range(1, len(adapter_names) + 1):
            if i == len(adapter_names) or adapter_names[i] != adapter_names[start]:
                name = adapter_names[start]
                segments.append(Segment(None if name == BASE else name, start, i))
                start = i
        return Routing(tuple(segments))

    # ---- merging --------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        raise ValueError("pal adapters are not merged in place; use merge_and_unload() (kind='lhuc' only)")

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Fold an LHUC adapter into the norms it scales (like IA³) and return the bare model.

        PAL, PAL-FFN and low-rank add a non-linear function of the layer input: they raise, as do
        several adapters at once. ``safe_merge``: raise if a merged norm holds a NaN or inf. Any
        failure leaves the model as it was.
        """
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        if len(names) != 1:
            raise ValueError(f"merge_and_unload merges exactly one pal adapter; got {names}")
        check_mergeable(self.bank, names[0], getattr(self.model.config, "model_type", type(self.model).__name__))
        return unload_model(self.model, self.bank, names[0], safe_merge, names)

    def unload(self) -> nn.Module:
        """Remove every adapter and hook; the model computes what it did before ``get_peft_model``."""
        return unload_model(self.model, self.bank, None, False, None)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            return self.merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)
        return self.unload()

    # ---- state dicts ----------------------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config, adapter_name: str,
                                state_dict: dict[str, torch.Tensor], unwanted_adapter_names: list[str]) -> dict:
        marker = f"{ATTRIBUTE}.{adapter_name}."
        return {k: v for k, v in state_dict.items() if marker in k and _under_bank(k, marker)}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f"{ATTRIBUTE}.{adapter_name}."
        if _under_bank(key, marker):
            head, _, rest = key.partition(marker)
            return f"{head}{ATTRIBUTE}.{rest}"
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config, adapter_name: str,
                                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        saved = f"{ATTRIBUTE}."
        out = {}
        for key, value in state_dict.items():
            head, sep, rest = key.partition(saved)
            if sep and _under_bank(key, saved):
                key = f"{head}{ATTRIBUTE}.{adapter_name}.{rest}"
            out[key] = value
        _check_complete(model, adapter_name, out)
        return out  # set_peft_model_state_dict drops "base_model.model." where the model has no such prefix


def _check_complete(model: nn.Module, adapter_name: str, loaded: dict[str, torch.Tensor]) -> None:
    """PEFT loads with ``strict=False``; an adapter file missing a tensor or holding another
    adapter's tensors must not leave identity weights silently: raise, naming every key."""
    marker = f"{ATTRIBUTE}.{adapter_name}."
    strip = "base_model.model."
    expected = {k.removeprefix(strip) for k in model.state_dict() if marker in k and _under_bank(k, marker)}
    got = {k.removeprefix(strip) for k in loaded if marker in k and _under_bank(k, marker)}
    if expected != got:
        raise AdapterLoadError(f"the saved pal adapter does not fit adapter {adapter_name!r} of this model (check "
                               f"kind, layers and sizes in adapter_config.json): missing {sorted(expected - got)}, "
                               f"unexpected {sorted(got - expected)}")


def _under_bank(key: str, marker: str) -> bool:
    """Whether ``marker`` (``pal_adapters.`` plus maybe a task) starts a component of ``key``."""
    i = key.find(marker)
    return i == 0 or (i > 0 and key[i - 1] == ".")


def _pass_adapter_names(adapter_names, module, args, kwargs):
    """A pre-hook giving ``adapter_names`` to an auxiliary module (a ``modules_to_save`` copy per row)."""
    kwargs["adapter_names"] = adapter_names
    return args, kwargs
