"""Extractive question answering (SQuAD): start/end logits per token, answers scored per question.

Data: the standard QA columns of ``training/squad.py`` (``id``, ``question``, ``context``,
``answers``). ``encode`` cuts each example into windows (``qa_windows.make_windows``; one example
may give several rows); each row carries ``example_id``, ``offset_mapping``, ``context`` and its
example's gold ``answers`` texts, so evaluation needs nothing but the dev batches.

Evaluation is per *question*, not per window: ``batch_outputs`` keeps each window's start/end
logits with its offsets; ``finish`` picks every question's best span over all of its windows
(n-best start/end pairs, ``max_answer_length``) and returns ``({id: predicted text},
{id: [gold texts]})``, which the official SQuAD exact match and F1 (``squad.squad_scores``) read;
the kind's ``exact_match``/``f1`` metrics are those percentages / 100 (fractions, like every other
metric here).

Options (``TaskConfig.options``, a task definition's ``options:``, saved with the model):
``doc_stride`` (tokens shared by consecutive windows, 128), ``n_best`` (start and end candidates
per window, 20), ``max_answer_length`` (tokens, 30).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import TaskKind
from .labels import require_integer, require_shape, require_tensor
from .qa_windows import Span, best_spans, make_windows
from .squad_metric import squad_scores


# The kind reports fractions (0..1) like every other metric of the library, so the PALs rule of
# choosing the checkpoint by the sum of dev metrics weighs QA like the other tasks; the official
# script's percentages are ``squad_scores`` itself (and what the benchmarks print).
def _exact_match(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    return squad_scores(predictions, references)["exact_match"] / 100


def _f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    return squad_scores(predictions, references)["f1"] / 100


class Window(NamedTuple):
    """What evaluation keeps of one window: start/end logits ``(T_w,)`` and the window's bookkeeping."""

    example_id: str
    start_logits: np.ndarray
    end_logits: np.ndarray
    offsets: list[tuple[int, int] | None]
    context: str
    answers: list[str]


class ExtractiveQAKind(TaskKind):
    """``(n, T, 2)`` start/end logits; labels ``(n, 2)`` start and end token positions (0 = CLS:
    the answer is not in this window)."""

    name = "extractive_qa"
    token_level = True
    fixed_num_labels = 2
    uses_label_names = False
    columns = ("id", "question", "context", "answers")
    metrics = MappingProxyType({"exact_match": _exact_match, "f1": _f1})
    default_metrics = ("exact_match", "f1")
    options = MappingProxyType({"doc_stride": 128, "n_best": 20, "max_answer_length": 30})
    input_forms = ("question_context",)
    windows_long_inputs = True

    def __init__(self, task: Any):
        super().__init__(task)
        for name in ("doc_stride", "n_best", "max_answer_length"):
            value = self.options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")

    # ---- loss ----------------------------------------------------------------------------------
    def mask_logits(self, logits: Tensor, mask: Tensor | None) -> Tensor:
        """Padding can be neither a start nor an end: its logits become the dtype's minimum, so the
        loss's softmax (and any argmax) sees only real tokens, the same whatever a batch's padding."""
        if mask is None:
            return logits
        return logits.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(logits.dtype).min)

    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        """Mean of the start and end cross-entropies over the ``T`` positions of each window."""
        labels = require_tensor(labels, self.name)
        require_integer(labels, self.name)
        require_shape(labels, (logits.shape[0], 2), self.name, "start and end token per row")
        labels = labels.long()
        bad = labels[(labels < 0) | (labels >= logits.shape[1])]
        if bad.numel():
            raise ValueError(f"{self.name} labels hold positions {sorted(set(bad.tolist()))[:5]}; expected "
                             f"token positions in 0..{logits.shape[1] - 1}")
        start, end = logits.float().unbind(-1)  # (n, T) each
        return (F.cross_entropy(start, labels[:, 0]) + F.cross_entropy(end, labels[:, 1])) / 2

    # ---- data ----------------------------------------------------------------------------------
    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], Any]:
        """Checks an ``answers`` value (``{"text": [...], "answer_start": [...]}``) and returns it."""
        def convert(value: Any) -> Any:
            if (not isinstance(value, Mapping) or not isinstance(value.get("text"), (list, tuple))
                    or len(value["text"]) != len(value.get("answer_start") or ())):
                raise ValueError(f"answers={value!r} must be {{'text': [...], 'answer_start': [...]}} with one "
                                 "start per text")
            return value
        return convert

    def encode(self, batch: dict[str, list[Any]], tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
        """Examples -> windows: model inputs, ``labels`` ``[start, end]``, ``length`` and the extra
        columns ``example_id``, ``offset_mapping``, ``context``, ``answers`` (gold texts) per window."""
        return make_windows(batch, tokenizer, max_length, self.options["doc_stride"])

    def collate_labels(self, labels: Sequence[Any], length: int) -> Tensor:
        return torch.tensor([list(x) for x in labels], dtype=torch.long).view(-1, 2)

    # ---- evaluation ----------------------------------------------------------------------------
    def batch_outputs(self, logits: Tensor, batch: Mapping[str, Any]) -> list[Window]:
        """One ``Window`` per row, its logits cut to the window's own tokens (padding dropped)."""
        missing = [k for k in ("example_id", "offset_mapping", "context", "answers") if k not in batch]
        if missing:
            raise ValueError(f"task type {self.name!r}: a dev batch lacks the window columns {missing} "
                             f"(keys: {sorted(batch)}); encode the data with this kind's encode()")
        logits = logits.detach().float().cpu()
        rows = []
        for i, offsets in enumerate(batch["offset_mapping"]):
            n = len(offsets)
            rows.append(Window(batch["example_id"][i], logits[i, :n, 0].numpy(), logits[i, :n, 1].numpy(),
                               offsets, batch["context"][i], list(batch["answers"][i])))
        return rows

    def finish(self, outputs: list[list[Window]]) -> tuple[dict[str, str], dict[str, list[str]]]:
        """``({question id: best answer text}, {question id: gold answer texts})`` over the dev set."""
        windows = [w for batch in outputs for w in batch]
        spans = self._spans(windows)
        return {qid: span.text for qid, span in spans.items()}, {w.example_id: w.answers for w in windows}

    def _spans(self, windows: list[Window]) -> dict[str, Span]:
        return best_spans({w.example_id: w.context for w in windows}, [w.example_id for w in windows],
                          [w.offsets for w in windows], [w.start_logits for w in windows],
                          [w.end_logits for w in windows], n_best=self.options["n_best"],
                          max_answer_length=self.options["max_answer_length"])

    # ---- predict -------------------------------------------------------------------------------
    def encode_for_predict(self, rows: Sequence[Mapping[str, Any]], tokenizer: Any,
                           max_length: int) -> tuple[dict[str, Tensor], Any]:
        """Rows with ``question`` and ``context`` -> padded windows and the windows' bookkeeping."""
        bad = [i for i, r in enumerate(rows) if not isinstance(r.get("question"), str)
               or not isinstance(r.get("context"), str)]
        if bad:
            raise ValueError(f"task type {self.name!r}: rows {bad[:5]} need 'question' and 'context' strings, "
                             f"got keys {sorted(rows[bad[0]])}")
        batch = {"id": [str(i) for i in range(len(rows))], "question": [r["question"] for r in rows],
                 "context": [r["context"] for r in rows]}
        windows = self.encode(batch, tokenizer, max_length)
        names = [k for k in tokenizer.model_input_names if k in windows]
        inputs = tokenizer.pad({k: windows[k] for k in names}, padding=True, return_tensors="pt")
        return dict(inputs), windows

    def describe(self, logits: Tensor, context: Any) -> list[dict[str, Any]]:
        """One ``{"answer", "start", "end", "score"}`` per input row (``context[start:end] == answer``)."""
        spans = self._spans(self.batch_outputs(logits, context))  # context: the windows' columns
        return [spans[str(i)].to_dict() for i in range(len(spans))]
