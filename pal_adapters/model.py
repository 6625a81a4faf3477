"""The multi-task model: one backbone, per-task adapters and heads, and the routing between them.

A batch travels one way: ``forward(task= | task_ids=)`` sets the router, the backbone runs with
the injected sites reading it, then each task's head reads its rows and computes its loss.
Mixed-task batches are sorted by task (stably) so each task owns one contiguous segment: the
backbone runs once at full batch, each adapter and head once on its slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from . import saving
from .config import AdapterConfig, TaskConfig, resolve_adapter_config
from .heads import TaskDefinitions, TaskHead, pool
from .inject import AdapterBank, get_bank, inject_adapters
from .inputs import InputLimits, task_index
from .io import fingerprint
from .layouts import Layout
from .merge import merge_lhuc
from .params import ParameterReport, freeze_backbone, parameter_report
from .replicate import replication_plan
from .routing import Routing, Segment

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


@dataclass
class MultiTaskOutput(ModelOutput):
    """``logits``: a tensor for a one-task batch; for a mixed batch a dict task -> logits of that
    task's rows, which are ``task_rows[task]`` (indices into the batch, in order).
    ``loss``: the mean over examples, i.e. ``Σ_t (n_t / B) · task_losses[t]``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | dict[str, torch.Tensor] | None = None
    task_losses: dict[str, torch.Tensor] | None = None
    task_rows: dict[str, torch.Tensor] | None = None


def as_task_config(spec: TaskConfig | Mapping[str, Any] | int | str) -> TaskConfig:
    """A task definition from a config, a dict of fields, a label count, or a task type."""
    if isinstance(spec, TaskConfig):
        return spec
    if isinstance(spec, Mapping):
        return TaskConfig.from_dict(dict(spec))
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise TypeError(f"task definition {spec!r}: expected a TaskConfig, a dict, a label count or a task type")
    return TaskConfig(num_labels=spec) if isinstance(spec, int) else TaskConfig(type=spec)


class MultiTaskModel(nn.Module):
    """One encoder, per-task adapters (``backbone.pal_adapters.<task>``) and heads (``heads.<task>``)."""

    def __init__(self, backbone: nn.Module, tasks: Mapping[str, Any], adapter: AdapterConfig | str | None = None,
                 freeze_backbone: bool = True, layout: Layout | None = None, *,
                 base_fingerprint: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = getattr(backbone, "base_model", backbone)  # a *For... model gives up its head
        self.adapter_config = resolve_adapter_config(adapter)
        inject_adapters(self.backbone, self.adapter_config, tasks=(), layout=layout)
        self.heads = nn.ModuleDict()  # with the bank, the model's one registry of tasks (see add_task)
        self.backbone_frozen = freeze_backbone
        self.input_limits = InputLimits.of(self.backbone)  # what forward accepts (inputs.py)
        # Computed now, before any tuning: saved adapters are checked against the base they came from.
        # Loading passes the saved one (already checked against this backbone): no second hash.
        self.base_fingerprint = base_fingerprint or fingerprint(self.backbone, self.bank.num_depths)
        for name, spec in tasks.items():
            self.add_task(name, spec)
        self.freeze_backbone(freeze_backbone)

    @property
    def bank(self) -> AdapterBank:
        return get_bank(self.backbone)

    @property
    def config(self):  # transformers.Trainer and pipelines look for a config
        return self.backbone.config

    @property
    def task_names(self) -> list[str]:
        """Task order; ``task_ids`` given as integers index into it."""
        return list(self.heads)

    @property
    def tasks(self) -> Mapping[str, TaskConfig]:
        """Task name -> definition, in task order (read-only: change it with ``add_task``/``remove_task``)."""
        return TaskDefinitions(self.heads)

    # ---- tasks: its adapters (in the bank, which checks and chooses tasks) and its head --------
    def add_task(self, name: str, spec: TaskConfig | Mapping[str, Any] | int | str = 2) -> None:
        """Add a task with fresh adapters (identity) and head; other tasks are untouched. All or
        nothing: on any failure (KeyboardInterrupt too) the model is left as it was."""
        task = as_task_config(spec)
        if task.pooling == "pooler" and getattr(self.backbone, "pooler", None) is None:
            raise ValueError(f"task {name!r}: pooling='pooler' but {type(self.backbone).__name__} has no pooler; "
                             "use pooling='cls' or 'mean'")
        self.bank.add_task(name, task.adapter or self.adapter_config)
        try:
            ref = next(self.backbone.parameters())
            head = TaskHead(task, self.bank.d_model).to(device=ref.device, dtype=ref.dtype)
            self.heads[name] = head.train(self.training)
        except BaseException:
            self.bank.remove_task(name)
            raise

    def remove_task(self, name: str) -> None:
        self.check_task(name)
        del self.heads[name]
        self.bank.remove_task(name)

    def check_task(self, name: str) -> None:
        """Raise ``KeyError`` naming ``name`` and this model's tasks unless it is one of them."""
        self.bank.check_task(name)

    def set_task(self, name: str | None) -> None:
        """Make ``name`` the task used when ``forward`` gets neither ``task`` nor ``task_ids``.

        Model-wide: every thread's calls that choose no task get it (for Trainer, pipelines). To
        serve several tasks at once pass ``task=`` per call, or use ``use_task`` per thread/request.
        """
        self.bank.set_task(name)

    def use_task(self, name: str | None) -> AbstractContextManager[None]:
        """Route calls without ``task=`` to ``name`` inside the block (``None``: bare backbone).

        Local to this thread or asyncio task (see ``AdapterBank.use_task``); other threads keep
        their own routing, and the ``set_task`` default is untouched.
        """
        return self.bank.use_task(name)

    def freeze_backbone(self, frozen: bool = True) -> None:
        freeze_backbone(self.backbone, frozen)
        self.backbone_frozen = frozen

    def parameter_report(self) -> ParameterReport:
        return parameter_report(self, head_prefix="heads")

    # ---- files (see saving.py) -------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Config + one folder per task (+ the backbone if tuned), safetensors and JSON only."""
        return saving.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: nn.Module | None = None,
                        check_weights: bool = True) -> MultiTaskModel:
        """Rebuild a saved model on its base ``backbone``; outputs equal the saved model's."""
        return saving.from_pretrained(directory, backbone, check_weights)

    def save_task(self, directory: str | Path, name: str) -> Path:
        """One task (adapter, head, definition) on its own, to move it between models."""
        return saving.save_task(self, directory, name)

    def load_task(self, path: str | Path, name: str | None = None, check_weights: bool = True) -> str:
        """Add a task saved with ``save_task``; returns its name."""
        return saving.load_task(self, path, name, check_weights)

    def merge_lhuc(self, name: str) -> nn.Module:
        """A plain copy of the backbone with ``name``'s LHUC scales folded in (see merge.py)."""
        return merge_lhuc(self, name)

    def task_model(self, name: str) -> nn.Module:
        """``name`` as a ``transformers.PreTrainedModel`` for ``pipeline`` (shares weights; task_view.py)."""
        from .task_view import task_model
        return task_model(self, name)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: Any = None, task: str | None = None,
                task_ids: Any = None, **backbone_kwargs: Any) -> MultiTaskOutput:
        """Run a one-task batch (``task="sst2"``, or the task set by ``set_task``) or a mixed one
        (``task_ids``: one task name or index per example). ``labels`` for a mixed batch: one tensor
        whose first dimension is the batch, or a dict task -> labels of that task's rows."""
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      **backbone_kwargs)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        batch_size = self.input_limits.check(inputs)
        if task_ids is not None:
            if task is not None:
                raise ValueError("pass either task= (one task for the batch) or task_ids= (one per example)")
            return self._forward_mixed(inputs, labels, task_index(task_ids, self.task_names, batch_size))
        task = task if task is not None else self.bank.active_routing().active
        if not isinstance(task, str):
            raise ValueError(f"no task given: pass task= or task_ids=, or call set_task(); tasks: {self.task_names}")
        self.check_task(task)
        with self.bank.router.routed(Routing.one_task(task)):
            hidden, pooled = self._encode(inputs)
        logits = self._head(task, hidden, pooled, attention_mask)
        loss = self.heads[task].loss(logits, labels) if labels is not None else None
        return MultiTaskOutput(loss=loss, logits=logits, task_losses={task: loss} if loss is not None else None)

    def _encode(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.backbone(**inputs, return_dict=True)
        return out.last_hidden_state, getattr(out, "pooler_output", None)

    def _head(self, task: str, hidden: torch.Tensor, pooled: torch.Tensor | None,
              mask: torch.Tensor | None) -> torch.Tensor:
        head: TaskHead = self.heads[task]
        if head.token_level:
            return head.kind.mask_logits(head(hidden), mask)
        return head(pool(hidden, mask, pooled, head.task.pooling))

    def _forward_mixed(self, inputs: dict[str, Any], labels: Any, ids: torch.Tensor) -> MultiTaskOutput:
        order = torch.sort(ids.cpu(), stable=True).indices  # rows grouped by task, order kept within
        device = _batch_device(inputs)
        inputs = {k: v.index_select(0, order.to(v.device)) if _is_batch(v, ids) else v for k, v in inputs.items()}
        counts = torch.bincount(ids.cpu(), minlength=len(self.heads)).tolist()
        segments, rows, start = [], {}, 0
        for index, count in enumerate(counts):
            if count:
                name = self.task_names[index]
                segments.append(Segment(name, start, start + count))
                rows[name] = order[start:start + count].to(device)
                start += count
        with self.bank.router.routed(Routing(tuple(segments))):
            hidden, pooled = self._encode(inputs)
        return self._mixed_heads(segments, rows, hidden, pooled, inputs.get("attention_mask"), labels)

    def _mixed_heads(self, segments, rows, hidden, pooled, mask, labels) -> MultiTaskOutput:
        logits, losses, total = {}, {}, 0.0
        batch = sum(s.stop - s.start for s in segments)
        for seg in segments:
            r = slice(seg.start, seg.stop)
            logits[seg.task] = self._head(seg.task, hidden[r], None if pooled is None else pooled[r],
                                          None if mask is None else mask[r])
            task_labels = _labels_for(labels, seg.task, rows[seg.task])
            if task_labels is not None:
                losses[seg.task] = self.heads[seg.task].loss(logits[seg.task], task_labels)
                total = total + losses[seg.task] * ((seg.stop - seg.start) / batch)
        return MultiTaskOutput(loss=total if losses else None, logits=logits, task_losses=losses or None,
                               task_rows=rows)

    # ---- all tasks for one input ----------------------------------------------------------
    @torch.no_grad()
    def predict_all(self, tasks: list[str] | None = None, **inputs: Any) -> dict[str, torch.Tensor]:
        """Every task's logits for the same inputs. The layers below the lowest adapted depth run
        once; from there the batch is replicated, one copy per task (the paper's top-half saving).
        With only tasks on top of the encoder (``placement="top"``) the encoder runs once.
        """
        if isinstance(tasks, str):
            raise TypeError(f"tasks={tasks!r} is one string; pass a list of task names")
        tasks = list(tasks) if tasks is not None else self.task_names
        if not tasks:
            raise ValueError(f"predict_all needs at least one task; this model's tasks: {self.task_names}")
        for t in tasks:
            self.check_task(t)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        batch = self.input_limits.check(inputs)
        first, after_layer = self.bank.replication_point(tasks)
        segments = tuple(Segment(t, i * batch, (i + 1) * batch) for i, t in enumerate(tasks))
        routing = Routing(segments, replication_plan(first, len(tasks), batch, after_layer))
        with self.bank.router.routed(routing):
            hidden, pooled = self._encode(inputs)
        mask = inputs.get("attention_mask")
        out = {}
        for seg in segments:
            r = slice(seg.start, seg.stop)
            out[seg.task] = self._head(seg.task, hidden[r], None if pooled is None else pooled[r], mask)
        return out


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside the block; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batch_device(inputs: dict[str, Any]) -> torch.device:
    return next(v.device for v in inputs.values() if isinstance(v, torch.Tensor))


def _is_batch(value: Any, ids: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == ids.numel()


def _labels_for(labels: Any, task: str, rows: torch.Tensor) -> torch.Tensor | None:
    """This task's labels: its rows of a batch tensor, or its entry of a dict."""
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return labels.get(task)
    return labels.index_select(0, rows.to(labels.device))


def add_pal(backbone: nn.Module, tasks: Mapping[str, Any], adapter: AdapterConfig | str | None = None,
            freeze_backbone: bool = True, layout: Layout | None = None) -> MultiTaskModel:
    """Turn an HF encoder into a multi-task model with per-task adapters and heads.

    ``tasks`` maps names to ``TaskConfig``s (or dicts of its fields, a label count, a task type);
    ``adapter`` is an ``AdapterConfig`` or a preset name (``"pal"``, ``"low_rank"``, ``"lhuc"``,
    ...); with ``freeze_backbone`` only adapters and heads train.
    """
    return MultiTaskModel(backbone, tasks, adapter=adapter, freeze_backbone=freeze_backbone, layout=layout)
