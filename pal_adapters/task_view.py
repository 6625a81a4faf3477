"""A transformers-native view of one task, for ``transformers.pipeline`` and friends.

``task_model(model, "ner")`` (the same as ``TaskView(model, "ner")``) is a ``PreTrainedModel`` whose
forward is ``model(**inputs, task="ner")`` and whose output is the standard type of the task's
kind, so ``pipeline("token-classification", model=view, tokenizer=tok)`` works unchanged
(transformers logs that ``TaskView`` is not one of its own classes; the pipeline runs all the same):

| kind                 | output                         | config.problem_type         | pipeline             |
|----------------------|--------------------------------|-----------------------------|----------------------|
| classification       | SequenceClassifierOutput (n,C) | single_label_classification | text-classification  |
| multi_label          | SequenceClassifierOutput (n,C) | multi_label_classification  | text-classification  |
| regression, ranking  | SequenceClassifierOutput (n,1) | regression (raw score)      | text-classification  |
| token_classification | TokenClassifierOutput (n,T,C)  | -                           | token-classification |
| extractive_qa        | QuestionAnsweringModelOutput   | -                           | question-answering*  |

(*) transformers 5 removed the question-answering pipeline; the view still returns the standard
start/end logits that its code (transformers 4, optimum, Trainer) reads.

The view holds the model itself (its weights are the model's, nothing is copied) and a copy of
the backbone's config carrying the task's ``id2label``. A kind outside the table: add a row to
``VIEWS`` (a kind name -> how its logits become the output).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .model import MultiTaskModel


@dataclass(frozen=True)
class View:
    """How a kind's logits become a standard output; ``problem_type`` tells the pipeline which
    function turns them into scores (softmax, sigmoid, none)."""

    output: Callable[[torch.Tensor | None, torch.Tensor], ModelOutput]
    problem_type: str | None = None


def _sequence(loss: torch.Tensor | None, logits: torch.Tensor) -> SequenceClassifierOutput:
    """``(n, C)``, or one score per row ``(n,)`` -> ``(n, 1)`` as HF regression heads give it."""
    return SequenceClassifierOutput(loss=loss, logits=logits.unsqueeze(-1) if logits.dim() == 1 else logits)


def _tokens(loss: torch.Tensor | None, logits: torch.Tensor) -> TokenClassifierOutput:
    return TokenClassifierOutput(loss=loss, logits=logits)


def _spans(loss: torch.Tensor | None, logits: torch.Tensor) -> QuestionAnsweringModelOutput:
    """``(n, T, 2)`` -> start and end logits ``(n, T)`` each."""
    start, end = logits.unbind(-1)
    return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


VIEWS: dict[str, View] = {
    "classification": View(_sequence, "single_label_classification"),
    "multi_label": View(_sequence, "multi_label_classification"),
    "regression": View(_sequence, "regression"),
    "ranking": View(_sequence, "regression"),
    "token_classification": View(_tokens),
    "extractive_qa": View(_spans),
}


def view_config(model: MultiTaskModel, task: str, view: View) -> Any:
    """A copy of the backbone's config with the task's labels (``id2label``) and problem type."""
    config = copy.deepcopy(model.config)
    spec = model.tasks[task]
    kind = model.heads[task].kind
    names = spec.labels if spec.labels and kind.uses_label_names else None
    width = kind.out_features
    config.id2label = {i: (names[i] if names else f"LABEL_{i}") for i in range(width)}
    config.label2id = {name: i for i, name in config.id2label.items()}
    config.problem_type = view.problem_type
    config.architectures = [TaskView.__name__]
    return config


class TaskView(PreTrainedModel):
    """One task of a ``MultiTaskModel`` as a ``PreTrainedModel`` (see the module docstring)."""

    base_model_prefix = "multitask"
    _supports_sdpa = True  # the backbone attends as it was loaded; the view only routes

    def __init__(self, model: MultiTaskModel, task: str):
        model.check_task(task)
        kind = model.heads[task].kind.name
        if kind not in VIEWS:
            raise ValueError(f"task {task!r} is of type {kind!r}, which has no transformers view; "
                             f"views exist for {sorted(VIEWS)} (add one to pal_adapters.task_view.VIEWS)")
        super().__init__(view_config(model, task, VIEWS[kind]))
        self._view = VIEWS[kind]
        self.multitask = model  # the model itself, as a submodule: its parameters, not copies
        self.task = task
        self.post_init()  # the properties pipelines read; init_weights below keeps every weight

    def init_weights(self) -> None:
        """Nothing to initialise or tie: every weight is the multi-task model's, trained or loaded.
        (``PreTrainedModel.post_init`` would otherwise re-initialise the backbone's submodules,
        adapters included, with the backbone's ``_init_weights``.)"""

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> ModelOutput:
        """``(B, T)`` inputs -> the kind's standard output; ``labels`` (or QA ``start_positions``
        and ``end_positions`` ``(B,)``) give the task's own loss."""
        if start_positions is not None and end_positions is not None:
            labels = torch.stack([start_positions, end_positions], dim=-1)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("output_attentions", "output_hidden_states")}
        out = self.multitask(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             labels=labels, task=self.task, **kwargs)
        result = self._view.output(out.loss, out.logits)
        return result if return_dict is not False else result.to_tuple()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("a TaskView is a view of a multi-task model: save the model "
                                  "(MultiTaskModel.save_pretrained / save_task) or export the task "
                                  "(pal_adapters.export.export_task)")


def task_model(model: MultiTaskModel, task: str) -> TaskView:
    """The ``transformers.PreTrainedModel`` view of ``task`` (shares ``model``'s weights)."""
    return TaskView(model, task)
