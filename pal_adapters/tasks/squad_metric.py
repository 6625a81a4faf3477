"""The official SQuAD v1.1 exact-match / F1 scores (a transcription of ``evaluate-v1.1.py``).

``evaluate.load("squad")`` downloads that script at run time, so it cannot be used offline. Answers
are normalised by lower-casing, removing punctuation, removing the articles a/an/the and collapsing
whitespace; exact match and bag-of-tokens F1 take the best over the gold answers and are averaged
over questions, times 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between the normalised prediction and gold answer (0 when nothing overlaps)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent over every question of ``golds``.

    ``predictions``: question id -> predicted text; ``golds``: question id -> its gold answer texts.
    A question without a prediction scores 0 (as the official script does).
    """
    if not golds:
        raise ValueError("no gold answers to score")
    em = f = 0.0
    for qid, answers in golds.items():
        answers = list(answers) or [""]  # SQuAD 2.0 style: no answer is the empty answer
        if qid in predictions:
            em += max(exact_match(predictions[qid], a) for a in answers)
            f += max(f1(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f / len(golds)}
