"""Token classification (NER): word tags aligned to sub-tokens, entity-level F1 with ``seqeval``.

Data: the reader gives ``tokens`` (words) and ``tags`` (one tag per word; see
``training/conll.py``); ``label_converter`` maps each sentence's tags to class ids.

Alignment (``align_labels``): a fast tokenizer's ``word_ids()`` says which word each sub-token
comes from. The first sub-token of a word carries the word's label; the others get -100 (skipped
by the loss), or, with the option ``label_all_subtokens``, the word's label too, ``B-X`` becoming
``I-X`` after the first sub-token (as in Hugging Face's ``run_ner``). Special tokens get -100.

Evaluation is at the word level, whatever the alignment: each word's prediction is its first
sub-token's argmax, words cut off by ``max_length`` are predicted ``O``, and the gold tags are the
whole sentence's. Entities are scored by ``seqeval`` in its default (conlleval-compatible) mode:
an entity counts only if its type and both boundaries match. ``accuracy`` is word-level tag
accuracy; ``f1_strict`` is seqeval's strict IOB2 mode (it differs only on invalid predicted
sequences such as ``I-PER`` after ``O``).

``predict`` tokenizes the raw text with offsets, tags each of the tokenizer's words by its first
sub-token, groups ``B-``/``I-`` tags into entities as seqeval does, and returns each entity's
``(text, label, start, end)`` with ``text == input[start:end]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Columns, TaskKind
from .classification import class_id_converter
from .labels import IGNORE_INDEX, require_integer, require_shape, require_tensor, zero_loss

Tags = list[list[str]]


class Entity(NamedTuple):
    """A predicted entity: ``text == input[start:end]``, ``label`` without its B-/I- prefix."""

    text: str
    label: str
    start: int
    end: int


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], label_all_subtokens: bool = False,
                 begin_to_inside: Mapping[int, int] | None = None) -> list[int]:
    """Word labels -> one label per sub-token (see the module docstring).

    Args:
        word_ids: ``encoding.word_ids()``: the word index of each sub-token, ``None`` for special tokens.
        word_labels: a class id per word.
        label_all_subtokens: label every sub-token of a word, not only the first.
        begin_to_inside: ``B-X`` id -> ``I-X`` id, used for the non-first sub-tokens when labelling all.
    """
    inside = begin_to_inside or {}
    labels, previous = [], None
    for word in word_ids:
        if word is None or word < 0:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(word_labels[word])
        elif label_all_subtokens:
            labels.append(inside.get(word_labels[word], word_labels[word]))
        else:
            labels.append(IGNORE_INDEX)
        previous = word if word is not None and word >= 0 else None
    return labels


def word_predictions(token_predictions: Sequence[int], word_ids: Sequence[int], num_words: int,
                     fill: int) -> list[int]:
    """Sub-token predictions -> one per word: the word's first sub-token; ``fill`` for words that have
    no sub-token in the input (cut off by ``max_length``, or dropped by the tokenizer)."""
    words, seen = [fill] * num_words, set()
    for prediction, word in zip(token_predictions, word_ids, strict=False):
        if word is not None and word >= 0 and word not in seen:
            seen.add(word)
            words[word] = int(prediction)
    return words


def entity_spans(text: str, tags: Sequence[str], word_spans: Sequence[tuple[int, int]]) -> list[Entity]:
    """Group word tags into entities (``seqeval.get_entities``) and map them to character spans.

    ``word_spans``: each word's ``(start, end)`` in ``text``.
    """
    from seqeval.metrics.sequence_labeling import get_entities  # imported when first needed

    return [Entity(text[word_spans[a][0]:word_spans[b][1]], label, word_spans[a][0], word_spans[b][1])
            for label, a, b in get_entities(list(tags))]


def _word_spans(word_ids: Sequence[int | None], offsets: Sequence[Sequence[int]]) -> dict[int, tuple[int, int]]:
    """Each word's character span: its first sub-token's start to its last sub-token's end."""
    spans: dict[int, tuple[int, int]] = {}
    for word, (start, end) in zip(word_ids, offsets, strict=True):
        if word is not None:
            spans[word] = (spans[word][0], end) if word in spans else (start, end)
    return spans


def _metric(name: str, strict: bool = False) -> Callable[[Tags, Tags], float]:
    """seqeval's metric ``name`` (``f1_score``, ...) as ``fn(predictions, references)``; seqeval (and
    the scikit-learn it loads) is imported when a score is first computed, not with the kind."""
    def score(predictions: Tags, references: Tags) -> float:
        from seqeval import metrics
        from seqeval.scheme import IOB2

        kwargs: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if strict else {}
        return float(getattr(metrics, name)(references, predictions, **kwargs))
    return score


class TokenClassificationKind(TaskKind):
    """A label per word (NER, POS, chunking); CE per sub-token with -100 ignored."""

    name = "token_classification"
    token_level = True
    columns = ("tokens", "tags")
    metrics = MappingProxyType({
        "f1": _metric("f1_score"),
        "precision": _metric("precision_score"),
        "recall": _metric("recall_score"),
        "accuracy": _metric("accuracy_score"),
        "f1_strict": _metric("f1_score", strict=True),
    })
    default_metrics = ("f1", "precision", "recall", "accuracy")
    options = MappingProxyType({"label_all_subtokens": False})
    input_forms = ("text",)

    def __init__(self, task: Any):
        super().__init__(task)
        if not isinstance(self.options["label_all_subtokens"], bool):
            raise ValueError(f"label_all_subtokens={self.options['label_all_subtokens']!r} must be true or false")

    # ---- names -----------------------------------------------------------------------------
    @property
    def tag_names(self) -> tuple[str, ...]:
        """Class id -> tag string; evaluation and predict need the names to find entities."""
        if self.task.labels is None:
            raise ValueError(f"type={self.name!r} needs labels= (the tag names, index = class id, e.g. "
                             "['O', 'B-PER', 'I-PER', ...]) to find entities")
        return self.task.labels

    def _outside_id(self) -> int:
        """The id predicted for words the model did not see: ``O`` when the tag set has it, else 0."""
        names = self.task.labels or ()
        return names.index("O") if "O" in names else 0

    def _begin_to_inside(self) -> dict[int, int]:
        names = list(self.task.labels or ())
        return {i: names.index("I-" + n[2:]) for i, n in enumerate(names)
                if n.startswith("B-") and "I-" + n[2:] in names}

    # ---- loss ------------------------------------------------------------------------------
    def loss(self, logits: Tensor, labels: Any) -> Tensor:
        """``(n, T, C)`` logits, ``(n, T)`` class ids (-100 skipped) -> mean CE over kept tokens."""
        labels = require_tensor(labels, self.name)
        require_shape(labels, tuple(logits.shape[:2]), self.name, "one class id per token, -100 = skip")
        require_integer(labels, self.name)
        labels = labels.long()
        kept = labels != IGNORE_INDEX
        bad = kept & ((labels < 0) | (labels >= logits.shape[-1]))
        if bad.any():
            raise ValueError(f"{self.name} labels {sorted(set(labels[bad].tolist()))[:5]} are not class ids in "
                             f"0..{logits.shape[-1] - 1} (or -100 to skip a token)")
        if not kept.any():
            return zero_loss(logits)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    # ---- data ------------------------------------------------------------------------------
    def label_converter(self, label_map: Mapping[str, int]) -> Callable[[Any], list[int]]:
        """A sentence's tags -> class ids: names through ``label_map``, ints and numeric strings as ids.

        Asks for the tag names now, before any training: evaluation needs them to find entities."""
        self.tag_names  # noqa: B018 (raises without labels=)
        to_id = class_id_converter(self.task.num_labels, label_map)
        return lambda tags: [to_id(tag) for tag in tags]

    def encode(self, batch: Columns, tokenizer: Any, max_length: int) -> Columns:
        """``tokens`` + ``tags`` (class ids per word) -> model inputs, aligned ``labels``, ``length``,
        and for evaluation ``word_ids`` (-1 = special token) and ``word_labels`` (every word's id)."""
        _require_fast(tokenizer)
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        out = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
        inside = self._begin_to_inside() if self.options["label_all_subtokens"] else None
        out.update(labels=[], word_ids=[], word_labels=[list(tags) for tags in batch["tags"]],
                   length=[len(ids) for ids in enc["input_ids"]])
        for i, tags in enumerate(batch["tags"]):
            word_ids = enc.word_ids(i)
            out["labels"].append(align_labels(word_ids, tags, self.options["label_all_subtokens"], inside))
            out["word_ids"].append([-1 if w is None else w for w in word_ids])
        return out

    def collate_labels(self, labels: Sequence[Any], length: int) -> Tensor:
        """Per-row label lists -> ``(n, length)``, right-padded with -100."""
        out = torch.full((len(labels), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(labels):
            row = torch.as_tensor(row, dtype=torch.long)
            out[i, :len(row)] = row
        return out

    def pad_labels(self, labels: Tensor, length: int) -> Tensor:
        return F.pad(labels, (0, length - labels.shape[1]), value=IGNORE_INDEX)

    # ---- evaluation ------------------------------------------------------------------------
    def batch_outputs(self, logits: Tensor, batch: Mapping[str, Any]) -> list[tuple[list[int], list[int]]]:
        """One ``(predicted, gold)`` pair of word-level id lists per row (see the module docstring)."""
        missing = [k for k in ("word_ids", "word_labels") if k not in batch]
        if missing:
            raise ValueError(f"{self.name}: a dev batch lacks {missing} (keys: {sorted(batch)}); "
                             "dev data must come from TokenClassificationKind.encode")
        predictions = logits.detach().argmax(-1).cpu().tolist()
        fill = self._outside_id()
        return [(word_predictions(p, w, len(g), fill), list(g))
                for p, w, g in zip(predictions, batch["word_ids"], batch["word_labels"], strict=True)]

    def finish(self, outputs: list[Any]) -> tuple[Tags, Tags]:
        """Every batch's pairs -> ``(predicted tags, gold tags)``: lists of sentences of tag strings."""
        names = self.tag_names
        pairs = [pair for batch in outputs for pair in batch]
        if not pairs:
            raise ValueError(f"{self.name}: no dev sentences to evaluate")
        return ([[names[i] for i in p] for p, _ in pairs], [[names[i] for i in g] for _, g in pairs])

    # ---- predict ---------------------------------------------------------------------------
    def encode_for_predict(self, rows: Sequence[Mapping[str, Any]], tokenizer: Any,
                           max_length: int) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
        """Raw ``text`` rows -> padded inputs; context: each row's text, ``word_ids`` and offsets."""
        _require_fast(tokenizer)
        if any("text_b" in r for r in rows):
            raise ValueError(f"type={self.name!r} tags the words of one text; rows with text_b are pairs")
        texts = [r["text"] for r in rows]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                        return_offsets_mapping=True)
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        context = [{"text": t, "word_ids": enc.word_ids(i), "offsets": enc["offset_mapping"][i].tolist()}
                   for i, t in enumerate(texts)]
        return inputs, context

    def describe(self, logits: Tensor, context: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``(n, T, C)`` logits -> per row ``{"entities": [{"text", "label", "start", "end"}, ...]}``."""
        names, predictions = self.tag_names, logits.detach().argmax(-1).cpu().tolist()
        out = []
        for row, ctx in zip(predictions, context, strict=True):
            spans = _word_spans(ctx["word_ids"], ctx["offsets"])
            words = sorted(spans)  # the words the input kept; renumbered 0..k-1
            position = {w: i for i, w in enumerate(words)}
            ids = word_predictions(row, [-1 if w is None else position[w] for w in ctx["word_ids"]],
                                   len(words), self._outside_id())
            entities = entity_spans(ctx["text"], [names[i] for i in ids], [spans[w] for w in words])
            out.append({"entities": [e._asdict() for e in entities]})
        return out


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; token classification needs "
                         "word_ids() and offsets (use AutoTokenizer.from_pretrained(..., use_fast=True))")
