"""Extractive QA windows and span post-processing (the standard Hugging Face / BERT SQuAD recipe).

Pre-processing: each (question, context) pair is tokenised with ``truncation="only_second"``; a
context longer than ``max_length`` is cut into overlapping windows, each sharing ``doc_stride``
tokens with the previous one (``return_overflowing_tokens``). Every window keeps:

- ``example_id``: the question id it came from (an example has one or more windows), with its
  ``context`` and gold ``answers`` texts, so post-processing needs nothing but the windows;
- ``offset_mapping``: ``(start, end)`` character offsets into the context for context tokens, and
  ``None`` for question and special tokens (so they can never be part of a predicted answer);
- ``labels``: ``[start, end]`` token positions of the first gold answer, or ``[0, 0]`` (the CLS
  position) when the answer is not wholly inside this window.

Post-processing: for every window the ``n_best`` highest start and end logits are paired
(``end >= start``, at most ``max_answer_length`` tokens, both in the context); a pair's score is
``start_logit + end_logit``; the best pair over *all* windows of an example gives the answer's
character span ``context[start:end]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Offsets = list[tuple[int, int] | None]
CLS_INDEX = 0  # BERT-style encoders put [CLS] first; "no answer in this window" points there


@dataclass(frozen=True)
class Span:
    """An answer: its text, ``context[start:end] == text``, and its score (``None``: no valid span)."""

    text: str
    start: int
    end: int
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "start": self.start, "end": self.end, "score": self.score}


def make_windows(batch: Mapping[str, list[Any]], tokenizer: Any, max_length: int,
                 doc_stride: int) -> dict[str, list[Any]]:
    """A batched ``Dataset.map`` function: QA columns -> one row per window (see the module docstring).

    ``batch`` holds ``id``, ``question``, ``context`` and, for labelled data, ``answers``. Returns the
    tokenizer's model inputs plus ``labels`` ``[start, end]``, ``example_id``, ``offset_mapping``,
    ``context``, ``answers`` (the gold texts) and ``length``, windows in example order. Needs a fast
    tokenizer (offsets) that pads on the right (the question comes first). The stride is at most half
    the context room of a window (``max_length`` - question - special tokens), so windows always
    advance by at least half their room (the tokenizer cannot advance at all once the stride reaches
    the room); a question that leaves fewer than 2 context tokens is an error.
    """
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"padding_side={tokenizer.padding_side!r}: QA windows need a right-padding tokenizer")
    questions = [q.lstrip() for q in batch["question"]]  # leading spaces only waste window room
    strides = _strides(questions, tokenizer, max_length, doc_stride)
    names = list(tokenizer.model_input_names)
    out: dict[str, list[Any]] = {k: [] for k in (*names, "labels", "example_id", "offset_mapping", "context",
                                                 "answers", "length")}
    for stride in sorted(set(strides), reverse=True):  # one tokenizer call per stride (usually one)
        rows = [i for i, s in enumerate(strides) if s == stride]
        enc = tokenizer([questions[i] for i in rows], [batch["context"][i] for i in rows], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            _add_window(out, enc, w, rows[sample], batch, names)
    samples = out.pop("_sample", [])
    order = sorted(range(len(samples)), key=samples.__getitem__)  # stable: an example's windows stay in order
    return {k: [v[i] for i in order] for k, v in out.items() if len(v) == len(order)}  # inputs it made


def _strides(questions: list[str], tokenizer: Any, max_length: int, doc_stride: int) -> list[int]:
    """Each example's stride: ``doc_stride``, at most half of the context room its question leaves."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    strides = []
    for q, n in zip(questions, lengths, strict=True):
        room = max_length - specials - n
        if room < 2:
            raise ValueError(f"question {q[:60]!r} has {n} tokens and leaves {room} of max_length={max_length} "
                             "for the context; raise max_length")
        strides.append(min(doc_stride, room // 2))
    return strides


def _add_window(out: dict[str, list[Any]], enc: Any, w: int, sample: int, batch: Mapping[str, list[Any]],
                names: list[str]) -> None:
    offsets = [tuple(o) if seq == 1 else None for o, seq in zip(enc["offset_mapping"][w], enc.sequence_ids(w),
                                                                strict=True)]
    answers = batch["answers"][sample] if "answers" in batch else None
    for k in names:
        if k in enc:
            out[k].append(enc[k][w])
    out["labels"].append(list(answer_positions(offsets, answers)))
    out["example_id"].append(str(batch["id"][sample]))
    out["offset_mapping"].append(offsets)
    out["context"].append(batch["context"][sample])
    out["answers"].append(list(answers["text"]) if answers else [])
    out["length"].append(len(enc["input_ids"][w]))
    out.setdefault("_sample", []).append(sample)


def answer_positions(offsets: Offsets, answers: Mapping[str, Sequence[Any]] | None) -> tuple[int, int]:
    """Token positions ``(start, end)`` of the first gold answer in a window, or ``(0, 0)`` (CLS) when the
    window does not hold all of it (or there is no answer).

    ``offsets``: the window's context offsets, ``None`` outside the context.
    """
    if not answers or not answers["text"]:
        return CLS_INDEX, CLS_INDEX
    start_char = int(answers["answer_start"][0])
    end_char = start_char + len(answers["text"][0])
    context = [i for i, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return CLS_INDEX, CLS_INDEX
    start = max(i for i in context if offsets[i][0] <= start_char)  # the token holding the first character
    end = min(i for i in context if offsets[i][1] >= end_char)  # the token holding the last character
    return start, end


def window_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: Offsets, n_best: int,
                 max_answer_length: int) -> list[tuple[float, int, int]]:
    """Candidate answers of one window: ``(score, start_char, end_char)``, best first.

    ``start_logits``, ``end_logits``: ``(T,)`` (padding beyond ``len(offsets)`` is ignored).
    """
    n = len(offsets)
    start_logits, end_logits = np.asarray(start_logits)[:n], np.asarray(end_logits)[:n]
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    spans = []
    for s in starts.tolist():
        for e in ends.tolist():
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((float(start_logits[s] + end_logits[e]), offsets[s][0], offsets[e][1]))
    return sorted(spans, key=lambda x: x[0], reverse=True)


def best_spans(contexts: Mapping[str, str], example_ids: Sequence[str], offsets: Sequence[Offsets],
               start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], *, n_best: int = 20,
               max_answer_length: int = 30) -> dict[str, Span]:
    """The best answer of every example over all of its windows.

    Args:
        contexts: example id -> context text.
        example_ids, offsets, start_logits, end_logits: one entry per window, in any order
            (logits ``(T_w,)`` each).

    Returns:
        example id -> ``Span``; an example whose windows hold no valid span gets ``Span("", 0, 0, None)``.
    """
    if not len(example_ids) == len(offsets) == len(start_logits) == len(end_logits):
        raise ValueError(f"{len(example_ids)} example ids, {len(offsets)} offsets, {len(start_logits)} start and "
                         f"{len(end_logits)} end logits: expected one of each per window")
    best: dict[str, tuple[float, int, int]] = {}
    for qid, offs, s, e in zip(example_ids, offsets, start_logits, end_logits, strict=True):
        spans = window_spans(s, e, offs, n_best, max_answer_length)
        if spans and (qid not in best or spans[0][0] > best[qid][0]):
            best[qid] = spans[0]
    out = {}
    for qid, context in contexts.items():
        if qid in best:
            score, a, b = best[qid]
            out[qid] = Span(context[a:b], a, b, score)
        else:
            out[qid] = Span("", 0, 0, None)
    return out
