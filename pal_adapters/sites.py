"""The hooks that run adapters inside an encoder, reading only the state of their own forward.

Per layer, one ``LayerSite`` owns four hooks:
- before the layer: settle its depth (from the call order where one module serves many depths),
  and, for ``predict_all`` above the replication point, repeat the layer's batch-shaped arguments;
- before the layer's first submodule: remember the layer input ``h_l`` (parallel adapters read it);
- before the layer's last norm (post-LN only): the adapters that act at ``Stage.RESIDUAL``;
- after the layer: the adapters that act at ``Stage.OUTPUT``.
Which adapter acts where (parallel / serial, pre- / post-LN, LHUC alone) is placement.py's table.
The encoder's own pre-hook opens a ``ForwardState`` for the call (routing.py) and its post-hook,
which runs even when the forward raises, closes it. Every site hook reads that state and writes
only into it, so concurrent forwards (threads, asyncio tasks) never see each other's routing.

Gradient checkpointing: transformers 5 checkpoints a layer's ``forward`` (the layer's own hooks
run once, outside; the submodule hooks run again in the backward recompute). The recompute runs
in ``backward()``, after the forward's state is closed and, on CUDA, on an autograd worker thread
that does not see the forward's context. So a site wraps its layer's checkpoint function: the
checkpointed call is bound to the forward's state at forward time and replays under it.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .placement import Stage, last_residual
from .replicate import LayerArgs, forward_signature
from .routing import ForwardState, Router, padding_keep

try:  # the base class of layers that transformers checkpoints
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers
    GradientCheckpointingLayer = ()


class EncoderHooks:
    """Open a ``ForwardState`` when the encoder starts, close it when it returns (or raises)."""

    def __init__(self, bank, attribute: str):
        self.bank, self.router, self.attribute = bank, bank.router, attribute

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and args:
            mask = forward_signature(type(module)).bind_partial(*args).arguments.get("attention_mask")
        keep = padding_keep(mask)
        # A DataParallel replica of the encoder holds a replica of the bank: its adapters act.
        bank = module._modules.get(self.attribute)
        bank = self.bank if bank is None else bank
        self.router.open_forward(ForwardState(bank, bank.active_routing(), keep, module))

    def after(self, module: nn.Module, args: tuple, output) -> None:
        self.router.close_forward(module)


class LayerSite:
    """The hooks of one layer module. ``depth`` is None when the module serves several depths."""

    def __init__(self, bank, index: int, depth: int | None, layer: nn.Module):
        self.router: Router = bank.router
        self.sum_stage = last_residual(bank.pre_ln)  # where predict_all replicates the batch
        self.index = index
        self.depth = depth
        self.layer_args = LayerArgs(layer, bank.resolved.layout.batch_args)
        self.pads_sequence = bank.resolved.layout.pads_sequence
        self.checkpointable = isinstance(layer, GradientCheckpointingLayer)

    def _state(self) -> ForwardState | None:
        state = self.router.forward_state()
        if state is None and torch._C._current_graph_task_id() != -1:
            raise RuntimeError(
                "pal_adapters: a layer is being recomputed in backward() without the routing of its forward. "
                "Checkpoint layers with transformers' gradient checkpointing "
                "(model.gradient_checkpointing_enable()), which pal_adapters binds to each forward's routing."
            )
        return state

    def _depth(self, state: ForwardState) -> int:
        return self.depth if self.depth is not None else state.depths[self.index]

    def before_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        state = self._state()
        if state is None:
            return None
        if self.depth is None:
            state.depths[self.index] = state.next_depth()
        if self.checkpointable and module.gradient_checkpointing:
            self._bind_checkpointing(module)
        plan = state.routing.replication
        if plan is None:
            return None
        depth = self._depth(state)
        if depth > plan.depth or (self.depth is None and depth == plan.depth and not plan.after_layer):
            state.keep = plan.repeat(state.keep)
            return self.layer_args.repeat(plan, args, kwargs)
        return None

    def capture_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self._state()
        if state is not None:
            h = args[0] if args else next(iter(kwargs.values()))
            state.inputs[self.index] = h
            if state.keep is not None and state.keep.shape[-1] != h.shape[1]:
                state.keep = self._fit_keep(state.keep, h.shape[1])

    def _fit_keep(self, keep: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, 1, 1, T) -> (B, 1, 1, length)``: padding positions appended where the encoder padded
        the sequence itself (``Layout.pads_sequence``); any other change of length is an error."""
        if not self.pads_sequence or length < keep.shape[-1]:
            raise RuntimeError(
                f"pal_adapters: the layers see {length} positions but the attention_mask has {keep.shape[-1]}. "
                "If the encoder pads the sequence itself (like Longformer, to a multiple of attention_window), "
                "pass a layout with pads_sequence=True")
        return torch.nn.functional.pad(keep, (0, length - keep.shape[-1]), value=False)

    def _replicate(self, state: ForwardState, depth: int, x: torch.Tensor) -> torch.Tensor:
        """``predict_all`` in the first adapted layer: everything up to the layer's last residual sum
        (its output, when every task acts on top) reads only the shared layer input, so the batch is
        repeated per task only here."""
        plan = state.routing.replication
        if plan is None or plan.depth != depth or (self.depth is None and not plan.after_layer):
            return x
        state.inputs[self.index] = plan.repeat(state.inputs.get(self.index))
        state.keep = plan.repeat(state.keep)
        return plan.repeat(x)

    def before_norm(self, module: nn.Module, args: tuple) -> tuple | None:
        state = self._state()
        if state is None:
            return None
        x = self._act(Stage.RESIDUAL, state, args[0])
        return None if x is args[0] else (x, *args[1:])

    def after_layer(self, module: nn.Module, args: tuple, output):
        state = self._state()
        if state is None:
            return None
        h = output[0] if isinstance(output, tuple) else output
        new = self._act(Stage.OUTPUT, state, h)
        if new is h:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _act(self, stage: Stage, state: ForwardState, x: torch.Tensor) -> torch.Tensor:
        """``x`` at ``stage`` after the routed adapters that act there (placement.py's table); the
        batch is replicated first where the last residual sum is seen."""
        depth = self._depth(state)
        plan = state.routing.replication
        if plan is not None and stage is (Stage.OUTPUT if plan.after_layer else self.sum_stage):
            x = self._replicate(state, depth, x)
        return state.bank.transform(stage, x, state.inputs.get(self.index), depth, state.routing, state.keep)

    # ---- gradient checkpointing -----------------------------------------------------------
    def _bind_checkpointing(self, module: nn.Module) -> None:
        """Wrap the layer's checkpoint function once (again after ``gradient_checkpointing_enable``
        replaces it). Two threads may both wrap it: either wrapper is correct."""
        func = module.__dict__.get("_gradient_checkpointing_func")
        if func is not None and not isinstance(func, RoutedCheckpoint):
            module._gradient_checkpointing_func = RoutedCheckpoint(func, self)

    def replay(self, state: ForwardState, depth: int | None, function, *args, **kwargs):
        """Run a checkpointed layer call (its forward or its recompute) under ``state``."""
        with self.router.replaying(state):
            if depth is not None:
                state.depths[self.index] = depth
            return function(*args, **kwargs)


class RoutedCheckpoint:
    """A layer's checkpoint function whose checkpointed call carries the forward's state with it."""

    def __init__(self, inner, site: LayerSite):
        self.inner, self.site = inner, site

    def __call__(self, function, *args, **kwargs):
        state = self.site.router.forward_state()  # at forward time, on the forward's thread
        if state is not None:
            function = partial(self.site.replay, state, state.depths.get(self.site.index), function)
        return self.inner(function, *args, **kwargs)


def unbind_checkpointing(layer: nn.Module) -> None:
    func = layer.__dict__.get("_gradient_checkpointing_func")
    if isinstance(func, RoutedCheckpoint):
        layer._gradient_checkpointing_func = func.inner
