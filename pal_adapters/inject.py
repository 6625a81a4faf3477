"""Placing adapters inside an encoder with forward hooks, leaving its modules and weights untouched.

``AdapterBank`` holds every task's adapters of one encoder and its ``Router``; the hooks that run
them are in sites.py. Hooks survive ``train()/eval()``, ``.to()``, gradient checkpointing and
``torch.compile``. The backbone's state dict keeps its own key names and the adapters appear under
the single prefix ``pal_adapters.``.

Which task acts is chosen per call (routing.py): ``use_task`` for the calls of one thread or
asyncio task, ``set_task`` as the model-wide default for calls that choose nothing. Adding or
removing tasks, attaching and detaching change the model itself: do them while no forward runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from .adapters import TaskAdapter
from .config import AdapterConfig, resolve_adapter_config
from .layouts import Layout, ResolvedLayout, resolve_layout
from .placement import SCALE, SiteRule, Stage, earliest, first_point, site_rules
from .routing import ALL_ROWS, Router, Routing
from .sites import EncoderHooks, LayerSite, unbind_checkpointing

ATTRIBUTE = "pal_adapters"  # the module name, hence the parameter-name prefix, of every adapter
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
# Saved tasks are folders named after the task (tasks/<name>/): well inside the 255-byte file-name
# limit of common file systems, with room for the temporary names of atomic writes.
MAX_TASK_NAME = 128


class AdapterBank(nn.ModuleDict):
    """All tasks' adapters of one encoder, keyed by task name, plus the router that picks them."""

    def __init__(self, base: nn.Module, resolved: ResolvedLayout):
        super().__init__()
        self.router = Router()
        self.resolved = resolved
        self.rules = site_rules(resolved.layout.pre_ln)  # placement -> where its adapters act (placement.py)
        self.d_model = int(base.config.hidden_size)
        self._base_ref = [base]  # a list keeps the encoder out of this module's children
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._replica_routing: Routing | None = None  # a DataParallel replica's caller's routing
        self.train(base.training)

    @property
    def num_depths(self) -> int:
        return self.resolved.num_depths

    @property
    def pre_ln(self) -> bool:
        return self.resolved.layout.pre_ln

    def replication_point(self, tasks: list[str]) -> tuple[int, bool]:
        """``(depth, after_layer)`` where ``predict_all`` over ``tasks`` repeats the batch (placement.py)."""
        return earliest([first_point(self[t].placement, self[t].depths) for t in tasks])

    # ---- tasks ----------------------------------------------------------------------------
    def add_task(self, name: str, config: AdapterConfig | str | dict | None = None,
                 device: torch.device | str | None = None) -> TaskAdapter:
        """Create ``name``'s adapters (identity at initialisation) in the encoder's dtype, on ``device``
        (default: the encoder's). ``device="meta"`` creates them empty, for weights loaded afterwards
        with ``load_state_dict(..., assign=True)`` (PEFT's ``low_cpu_mem_usage``)."""
        self.check_new_name(name)
        ref = next((p for p in self._base_ref[0].parameters() if p.is_floating_point()), None)
        target = torch.device(device) if device is not None else (ref.device if ref is not None else None)
        meta = target is not None and target.type == "meta"
        with torch.device("meta") if meta else nullcontext():
            adapter = TaskAdapter(resolve_adapter_config(config), self.d_model, self.num_depths)
        if ref is not None:
            adapter.to(dtype=ref.dtype)
        if target is not None and not meta and not any(p.is_meta for p in adapter.parameters()):
            adapter.to(device=target)  # (already on meta: created under accelerate's init_empty_weights)
        adapter.train(self._base_ref[0].training)  # an eval-mode model gets eval-mode adapters (no dropout)
        self[name] = adapter
        return adapter

    def check_new_name(self, name: str) -> None:
        """A task name is an identifier, a folder name when saved, and a key of this ModuleDict."""
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must be a non-empty identifier (letters, digits, _ and -)")
        if len(name) > MAX_TASK_NAME:
            raise ValueError(f"task name {name[:24]!r}... has {len(name)} characters; saved tasks are folders named "
                             f"after their task, so a name has at most {MAX_TASK_NAME}")
        if name in self:
            raise ValueError(f"task {name!r} already has adapters; remove_task({name!r}) first")
        if hasattr(self, name):  # nn.ModuleDict would refuse it, or shadow the attribute
            raise ValueError(f"task name {name!r} is reserved: it is an attribute of {type(self).__name__} "
                             "(an nn.ModuleDict; e.g. 'keys', 'forward', 'training', 'router'); choose another name")

    def remove_task(self, name: str) -> None:
        self.check_task(name)
        if name in {s.task for s in self.router.default.segments}:
            self.router.set_default(Routing.one_task(None))
        del self[name]

    # The one home of checking and choosing a task: MultiTaskModel's methods call these.
    def check_task(self, name: str) -> None:
        """Raise ``KeyError`` naming ``name`` and the known tasks unless ``name`` has adapters here."""
        if name not in self:
            raise KeyError(f"unknown task {name!r}; this model's tasks: {list(self.keys())}")

    def set_task(self, name: str | None) -> None:
        """Route every row to ``name``'s adapters by default, model-wide; ``None`` runs the bare backbone.

        The default applies to every call, in every thread, that chooses no task itself (no
        ``task=``/``task_ids=``, outside ``use_task``). Set it once (Trainer, pipelines); to serve
        several tasks concurrently pass ``task=`` or use ``use_task`` per request instead.
        """
        if name is not None:
            self.check_task(name)
        self.router.set_default(Routing.one_task(name))

    @contextmanager
    def use_task(self, name: str | None) -> Iterator[None]:
        """``with bank.use_task("sst2"): ...`` for code that cannot pass a task to ``forward``.

        Local to the calling thread or asyncio task (a ``contextvars`` context): other threads
        and tasks keep their own routing. Asyncio tasks and ``asyncio.to_thread`` calls started
        inside the block inherit it; a ``threading.Thread`` started inside it does not (it sees
        the ``set_task`` default). Blocks nest; the previous routing is restored on exit.
        """
        if name is not None:
            self.check_task(name)
        with self.router.routed(Routing.one_task(name)):
            yield

    def active_routing(self) -> Routing:
        """The routing a call from this context gets when it chooses none (see routing.py)."""
        routing = self.router.context_routing()
        if routing is not None:
            return routing
        return self.router.default if self._replica_routing is None else self._replica_routing

    def _replicate_for_data_parallel(self) -> AdapterBank:
        # DataParallel replicates in the caller's thread, then runs each replica on a thread of its
        # own that does not see the caller's context: the replica keeps the caller's routing.
        replica = super()._replicate_for_data_parallel()
        replica._replica_routing = self.active_routing()
        return replica

    # ---- what a site computes -------------------------------------------------------------
    def transform(self, stage: Stage, x: torch.Tensor, h_in: torch.Tensor | None, depth: int, routing: Routing,
                  keep: torch.Tensor | None) -> torch.Tensor:
        """Apply every routed task's adapters that act at ``stage`` (placement.py) of layer ``depth``.

        ``x``: ``(B, T, d_m)`` the last norm's input (``Stage.RESIDUAL``) or the layer output;
        ``h_in``: ``(B, T, d_m)`` the layer input; ``keep``: ``(B, 1, 1, T)`` padding mask or None.
        Each task acts on its own segment of rows.
        """
        segments = routing.segments
        if not segments:
            return x
        if len(segments) == 1 and segments[0].stop == ALL_ROWS:
            return self._apply_task(segments[0].task, stage, x, h_in, depth, keep)
        if not any(self._acts(seg.task, stage, depth) for seg in segments):
            return x  # e.g. below the replication point of predict_all
        routing.check_batch(x.shape[0])
        parts = []
        for seg in segments:
            rows = seg.rows()
            seg_in = h_in[rows] if h_in is not None else None
            seg_keep = keep[rows] if keep is not None else None
            parts.append(self._apply_task(seg.task, stage, x[rows], seg_in, depth, seg_keep))
        return torch.cat(parts)

    def _acts(self, task: str | None, stage: Stage, depth: int) -> bool:
        """Whether ``task``'s adapter changes the value at ``stage`` of layer ``depth``."""
        if task is None or depth not in self[task].depths:
            return False
        return self._rule(self[task]).acts_at is stage

    def _rule(self, adapter: TaskAdapter) -> SiteRule:
        """Where and how ``adapter`` acts: its placement's row of placement.py's table (LHUC alone: SCALE)."""
        return self.rules[adapter.placement] if adapter.ts is not None else SCALE

    def _apply_task(self, task: str | None, stage: Stage, x: torch.Tensor, h_in: torch.Tensor | None, depth: int,
                    keep: torch.Tensor | None) -> torch.Tensor:
        if task is None:  # rows that run the bare backbone
            return x
        adapter: TaskAdapter = self[task]
        if depth not in adapter.depths:
            return x
        rule = self._rule(adapter)
        if stage is not rule.acts_at:
            return x
        if rule.scales:
            return x * _in_dtype(adapter.output_scale(depth), x.dtype)
        if rule.maps:  # a method on top: TS(x) is the new value
            return _delta(adapter, x, depth, keep, x.dtype)
        return x + _delta(adapter, h_in if rule.reads_input else x, depth, keep, x.dtype)

    # ---- lifecycle ------------------------------------------------------------------------
    def attach(self) -> None:
        base = self._base_ref[0]
        encoder = EncoderHooks(self, ATTRIBUTE)
        self._handles.append(base.register_forward_pre_hook(encoder.before, with_kwargs=True))
        self._handles.append(base.register_forward_hook(encoder.after, always_call=True))
        depth_fixed = not self.resolved.layout.shared
        for i, layer in enumerate(self.resolved.modules):
            site = LayerSite(self, i, i if depth_fixed else None, layer)
            self._handles.append(layer.register_forward_pre_hook(site.before_layer, with_kwargs=True))
            entry = self.resolved.input_module_of(layer)
            self._handles.append(entry.register_forward_pre_hook(site.capture_input, with_kwargs=True))
            self._handles.append(layer.register_forward_hook(site.after_layer))
            norm = self.resolved.norm_of(layer)
            if norm is not None:
                self._handles.append(norm.register_forward_pre_hook(site.before_norm))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in self.resolved.modules:
            unbind_checkpointing(layer)


def _in_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _delta(adapter: TaskAdapter, h: torch.Tensor, depth: int, keep: torch.Tensor | None,
           dtype: torch.dtype) -> torch.Tensor:
    """``(B, T, d_m) -> (B, T, d_m)``: TS(h) computed in the adapter's own dtype and returned in
    ``dtype``, the encoder's: PEFT keeps adapters in fp32 on a bf16 or fp16 encoder
    (``autocast_adapter_dtype``). The same dtype everywhere (the common case) adds no op."""
    own = _dtype_of(adapter)
    return _in_dtype(adapter.delta(_in_dtype(h, own), depth, keep), dtype)


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first parameter, found by walking its dicts: ~1 µs where
    ``next(module.parameters())`` takes ~6 µs (it runs once per adapted layer and forward)."""
    for param in module._parameters.values():
        if param is not None:
            return param.dtype
    for child in module._modules.values():
        found = _dtype_of(child) if child is not None else None
        if found is not None:
            return found
    return None


def inject_adapters(
    model: nn.Module,
    config: AdapterConfig | str | dict | None = None,
    tasks: tuple[str, ...] | list[str] = ("default",),
    layout: Layout | None = None,
) -> AdapterBank:
    """Add ``config`` adapters for each of ``tasks`` to ``model`` (a bare or wrapped HF encoder).

    The adapters are registered as ``model.pal_adapters`` (so ``.to()``, ``state_dict()`` and
    optimisers see them) and are identity at initialisation. The first task is made active.
    Returns the ``AdapterBank``; use ``bank.add_task`` for tasks with other configs.
    """
    if hasattr(model, ATTRIBUTE):
        raise ValueError("model already has pal_adapters; add tasks with get_bank(model).add_task(...)")
    base, resolved = resolve_layout(model, layout)
    bank = AdapterBank(base, resolved)
    for name in tasks:
        bank.add_task(name, config)
    model.add_module(ATTRIBUTE, bank)
    bank.attach()
    if tasks:
        bank.set_task(tasks[0])
    return bank


def get_bank(model: nn.Module) -> AdapterBank:
    bank = getattr(model, ATTRIBUTE, None)
    if not isinstance(bank, AdapterBank):
        raise ValueError(f"{type(model).__name__} has no pal_adapters; call inject_adapters(model, ...) first")
    return bank


def remove_adapters(model: nn.Module) -> AdapterBank:
    """Detach every hook and drop the adapters: ``model`` computes exactly what it did before."""
    bank = get_bank(model)
    bank.detach()
    delattr(model, ATTRIBUTE)
    return bank
