"""The two computations an export captures, as plain modules over positional tensors.

``TaskGraph`` is ``model(**inputs, task=name).logits`` and ``AllTasksGraph`` is
``model.predict_all(tasks, **inputs)``: the exported graph is the very code ``predict`` runs, so
it routes, replicates the batch above the shared layers and masks logits exactly as PyTorch does.
The router's choice is made inside ``forward`` (``task=`` / ``predict_all`` set the call's
routing, see routing.py), so a tracer records one task's adapters and nothing of the others.

Inputs are positional (exporters name graph inputs by position): ``input_ids`` and
``attention_mask`` ``(B, T)`` int64, and ``token_type_ids`` ``(B, T)`` when the encoder has more
than one token type (BERT, ELECTRA, ALBERT; not RoBERTa, DistilBERT, DeBERTa-v2, ModernBERT).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..model import MultiTaskModel

EXAMPLE_BATCH, EXAMPLE_LENGTH = 2, 8  # traced shapes: every dim differs from every weight's


def graph_inputs(model: MultiTaskModel) -> tuple[str, ...]:
    """The graph's input names, in order: ``input_ids``, ``attention_mask`` [, ``token_type_ids``]."""
    takes_types = "token_type_ids" in inspect.signature(model.backbone.forward).parameters
    if takes_types and getattr(model.config, "type_vocab_size", 0) > 1:
        return ("input_ids", "attention_mask", "token_type_ids")
    return ("input_ids", "attention_mask")


class TaskGraph(nn.Module):
    """One task: ``(B, T)`` inputs -> that task's logits (shapes per kind, ``tasks/base.py``)."""

    def __init__(self, model: MultiTaskModel, task: str, names: tuple[str, ...]):
        super().__init__()
        model.check_task(task)
        self.model, self.task, self.names = model, task, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), task=self.task).logits


class AllTasksGraph(nn.Module):
    """Every task of ``tasks`` for the same inputs: a tuple of logits, in ``tasks`` order."""

    def __init__(self, model: MultiTaskModel, tasks: list[str], names: tuple[str, ...]):
        super().__init__()
        for t in tasks:
            model.check_task(t)
        self.model, self.tasks, self.names = model, list(tasks), names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.predict_all(self.tasks, **dict(zip(self.names, tensors, strict=True)))
        return tuple(out[t] for t in self.tasks)


def example_inputs(model: MultiTaskModel, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """``(2, 8)`` inputs to trace with. Row 1 ends in padding, so the graph keeps the mask path
    (encoders drop the mask of an unpadded batch); ids avoid 0-4, where special tokens live."""
    g = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (EXAMPLE_BATCH, EXAMPLE_LENGTH), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    device = next(model.parameters()).device
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[n].to(device) for n in names)
