"""Placing adapters inside an encoder with forward hooks, leaving its modules and weights untouched.

Per layer, one ``LayerSite`` owns four hooks:
- before the layer: settle its depth (from the call order where one module serves many depths);
- before the layer's first submodule: remember the layer input ``h_l`` (parallel adapters read it);
- before the layer's last norm (post-LN only): add ``TS(h_l)`` to the residual sum it receives
  (parallel placement, the reference code's ``self.output(intermediate, attention_output + TS)``);
- after the layer: serial adapters ``h + TS(h)``, LHUC alone ``h · 2σ(θ)``, and parallel adapters
  of pre-LN layers, whose output is the residual sum.
Hooks survive ``train()/eval()``, ``.to()``, gradient checkpointing and ``torch.compile``. Under
checkpointing (transformers 5 checkpoints a layer's ``forward``) the layer's own hooks run once and
the submodule hooks run again in the backward recompute, which is why the input is read at a
submodule; the routing is read again then too, so a forward's backward must come before the
next forward changes the routing (the usual training loop). The backbone's state dict keeps its
own key names and the adapters appear under the single prefix ``pal_adapters.``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .adapters import TaskAdapter
from .config import AdapterConfig, resolve_adapter_config
from .layouts import Layout, ResolvedLayout, resolve_layout
from .routing import ALL_ROWS, Router, Segment

ATTRIBUTE = "pal_adapters"  # the module name, hence the parameter-name prefix, of every adapter
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class AdapterBank(nn.ModuleDict):
    """All tasks' adapters of one encoder, keyed by task name, plus the router that picks them."""

    def __init__(self, base: nn.Module, resolved: ResolvedLayout):
        super().__init__()
        self.router = Router()
        self.resolved = resolved
        self.d_model = int(base.config.hidden_size)
        self._base_ref = [base]  # a list keeps the encoder out of this module's children
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.train(base.training)

    @property
    def num_depths(self) -> int:
        return self.resolved.num_depths

    @property
    def pre_ln(self) -> bool:
        return self.resolved.layout.pre_ln

    # ---- tasks ----------------------------------------------------------------------------
    def add_task(self, name: str, config: AdapterConfig | str | dict | None = None) -> TaskAdapter:
        """Create ``name``'s adapters (identity at initialisation) on the encoder's device/dtype."""
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must be a non-empty identifier (letters, digits, _ and -)")
        if name in self:
            raise ValueError(f"task {name!r} already has adapters; remove_task({name!r}) first")
        adapter = TaskAdapter(resolve_adapter_config(config), self.d_model, self.num_depths)
        ref = next((p for p in self._base_ref[0].parameters() if p.is_floating_point()), None)
        if ref is not None:
            adapter.to(device=ref.device, dtype=ref.dtype)
        adapter.train(self._base_ref[0].training)  # an eval-mode model gets eval-mode adapters (no dropout)
        self[name] = adapter
        return adapter

    def remove_task(self, name: str) -> None:
        self.check_task(name)
        if name in self._routed_tasks():
            self.router.set_task(None)
        del self[name]

    def check_task(self, name: str) -> None:
        if name not in self:
            raise KeyError(f"unknown task {name!r}; tasks with adapters: {sorted(self.keys())}")

    def _routed_tasks(self) -> set[str]:
        return {s.task for s in self.router.segments}

    def set_task(self, name: str | None) -> None:
        """Route every row to ``name``'s adapters; ``None`` runs the bare backbone."""
        if name is not None:
            self.check_task(name)
        self.router.set_task(name)

    @contextmanager
    def use_task(self, name: str | None) -> Iterator[None]:
        """``with bank.use_task("sst2"): ...`` for code that cannot pass a task to ``forward``."""
        if name is not None:
            self.check_task(name)
        with self.router.routed(() if name is None else (Segment(name, 0, ALL_ROWS),)):
            yield

    # ---- what a site computes -------------------------------------------------------------
    def transform(self, stage: str, x: torch.Tensor, h_in: torch.Tensor | None, depth: int) -> torch.Tensor:
        """Apply every routed task's adapters of ``stage`` ("norm" or "output") at ``depth``.

        ``x``: ``(B, T, d_m)`` the norm input or the layer output; ``h_in``: ``(B, T, d_m)`` the
        layer input. Each task acts on its own segment of rows.
        """
        segments = self.router.segments
        if not segments:
            return x
        keep = self.router.keep
        if len(segments) == 1 and segments[0].stop == ALL_ROWS:
            return self._apply_task(segments[0].task, stage, x, h_in, depth, keep)
        if not any(depth in self[seg.task].depths for seg in segments):
            return x  # e.g. below the replication point of predict_all
        self.router.check_batch(x.shape[0])
        parts = []
        for seg in segments:
            rows = seg.rows()
            seg_in = h_in[rows] if h_in is not None else None
            seg_keep = keep[rows] if keep is not None else None
            parts.append(self._apply_task(seg.task, stage, x[rows], seg_in, depth, seg_keep))
        return torch.cat(parts)

    def _apply_task(self, task: str, stage: str, x: torch.Tensor, h_in: torch.Tensor | None, depth: int,
                    keep: torch.Tensor | None) -> torch.Tensor:
        adapter: TaskAdapter = self[task]
        if depth not in adapter.depths:
            return x
        if adapter.ts is None:  # LHUC alone scales the layer output, whatever the placement
            return x * adapter.output_scale(depth) if stage == "output" else x
        if adapter.placement == "serial":
            return x + adapter.delta(x, depth, keep) if stage == "output" else x
        # Parallel: TS reads the layer input and joins the last residual sum.
        joins_here = stage == ("output" if self.pre_ln else "norm")
        return x + adapter.delta(h_in, depth, keep) if joins_here else x

    # ---- lifecycle ------------------------------------------------------------------------
    def attach(self) -> None:
        base = self._base_ref[0]
        self._handles.append(base.register_forward_pre_hook(_MaskCapture(self.router, base), with_kwargs=True))
        depth_fixed = not self.resolved.layout.shared
        for i, layer in enumerate(self.resolved.modules):
            site = LayerSite(self, i if depth_fixed else None)
            self._handles.append(layer.register_forward_pre_hook(site.before_layer))
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


class _MaskCapture:
    """Encoder pre-hook: hand the 2D padding mask to the router before any layer runs."""

    def __init__(self, router: Router, base: nn.Module):
        self.router = router
        self.signature = inspect.signature(base.forward)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and args:
            bound = self.signature.bind_partial(*args)
            mask = bound.arguments.get("attention_mask")
        self.router.begin_forward(mask)


class LayerSite:
    """The hooks of one layer module. ``depth`` is None when the module serves several depths."""

    def __init__(self, bank: AdapterBank, depth: int | None):
        self.bank = bank
        self.depth = depth
        self._current_depth = -1
        self._input: torch.Tensor | None = None

    def before_layer(self, module: nn.Module, args: tuple) -> None:
        self._current_depth = self.depth if self.depth is not None else self.bank.router.next_depth()

    def capture_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._input = args[0] if args else next(iter(kwargs.values()))

    def _replicate(self, x: torch.Tensor) -> torch.Tensor:
        """``predict_all`` in the first adapted layer: everything up to the layer's last residual sum
        reads only the shared layer input, so the batch is repeated per task only here."""
        router = self.bank.router
        plan = router.replication
        if plan is None or plan.depth != self._current_depth:
            return x
        self._input = plan.repeat(self._input)
        router.keep = plan.repeat(router.keep)
        return plan.repeat(x)

    def before_norm(self, module: nn.Module, args: tuple) -> tuple | None:
        x = self.bank.transform("norm", self._replicate(args[0]), self._input, self._current_depth)
        return None if x is args[0] else (x, *args[1:])

    def after_layer(self, module: nn.Module, args: tuple, output):
        h = output[0] if isinstance(output, tuple) else output
        start = self._replicate(h) if self.bank.pre_ln else h  # pre-LN: the output is the last residual sum
        new = self.bank.transform("output", start, self._input, self._current_depth)
        if new is h:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new


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
