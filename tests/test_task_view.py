"""The transformers view of one task: standard outputs, shared weights, and pipelines that answer
as ``predict_rows`` does (labels, scores, entity spans; QA answer spans without the QA pipeline,
which transformers 5 removed)."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_adapters, tiny_model, word_tokenizer
from transformers import BertTokenizerFast, pipeline
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from pal_adapters import add_pal
from pal_adapters.predict import predict_rows
from pal_adapters.task_view import TaskView, task_model

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "who", "what", "is", "where", "##s", "##x"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TASKS = {
    "sentiment": {"type": "classification", "num_labels": 3, "labels": ["neg", "neu", "pos"]},
    "topics": {"type": "multi_label", "num_labels": 3, "labels": ["x", "y", "z"]},
    "similarity": {"type": "regression"},
    "rank": {"type": "ranking", "num_candidates": 2},
    "ner": {"type": "token_classification", "num_labels": 5, "labels": TAGS},
    "qa": {"type": "extractive_qa"},
}
TEXTS = ["alpha bravo charlie delta echo foxtrot", "golf hotels india juliet kilo", "lima alphax bravo who is where",
         "charlie delta"]
CONTEXT = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("vocab"), WORDS)


@pytest.fixture(scope="module")
def model(tok):
    """Trained-looking weights: adapters and heads far from their init, so answers differ by row."""
    m = add_pal(tiny_model("bert", vocab_size=len(tok)), TASKS, adapter="pal").eval()
    randomize_adapters(m, std=0.5)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in m.heads.values():
            head.out.weight.copy_(torch.randn(head.out.weight.shape, generator=g) * 2.0)
    return m


def _pipe(kind: str, model, task: str, tok):
    return pipeline(kind, model=task_model(model, task), tokenizer=tok)


def test_view_shares_the_models_weights_and_changes_none(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view = TaskView(model, "ner")
    assert view.multitask is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # post_init re-initialises nothing
    own = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in view.parameters()} == own  # the same tensors, no copy


def test_model_task_model_and_the_package_name_give_the_same_view(model, tok):
    import pal_adapters

    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**batch, task="sentiment").logits
        for view in (model.task_model("sentiment"), pal_adapters.task_model(model, "sentiment")):
            assert isinstance(view, pal_adapters.TaskView) and view.multitask is model
            torch.testing.assert_close(view(**batch).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize(("task", "output", "id2label"), [
    ("sentiment", SequenceClassifierOutput, {0: "neg", 1: "neu", 2: "pos"}),
    ("similarity", SequenceClassifierOutput, {0: "LABEL_0"}),
    ("ner", TokenClassifierOutput, dict(enumerate(TAGS))),
    ("qa", QuestionAnsweringModelOutput, {0: "LABEL_0", 1: "LABEL_1"}),
])
def test_view_returns_the_kinds_standard_output_with_id2label(model, tok, task, output, id2label):
    backbone_labels = dict(model.config.id2label)
    view = task_model(model, task)
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out, logits = view(**enc), model(**enc, task=task).logits
    assert type(out) is output and view.config.id2label == id2label
    if output is QuestionAnsweringModelOutput:
        assert torch.equal(torch.stack([out.start_logits, out.end_logits], -1), logits)
    else:
        assert torch.equal(out.logits.reshape(logits.shape), logits)
    assert view.config is not model.config and model.config.id2label == backbone_labels  # a copy carries the labels


def test_view_loss_is_the_tasks_loss(model, tok):
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        assert torch.equal(task_model(model, "sentiment")(**enc, labels=labels).loss,
                           model(**enc, task="sentiment", labels=labels).loss)


def test_classification_pipeline_gives_predicts_labels_and_probabilities(model, tok):
    rows, _ = predict_rows(model, tok, [{"text": t} for t in TEXTS], ["sentiment"])
    answers = _pipe("text-classification", model, "sentiment", tok)(TEXTS)
    assert len({a["label"] for a in answers}) > 1  # the rows differ, so agreement means something
    for answer, row in zip(answers, rows, strict=True):
        assert answer["label"] == row["sentiment"]["label"]
        assert answer["score"] == pytest.approx(row["sentiment"]["probabilities"][answer["label"]], abs=1e-5)


def test_multi_label_pipeline_gives_predicts_sigmoid_probabilities(model, tok):
    rows, _ = predict_rows(model, tok, [{"text": t} for t in TEXTS], ["topics"])
    answers = pipeline("text-classification", model=task_model(model, "topics"), tokenizer=tok, top_k=None)(TEXTS)
    for answer, row in zip(answers, rows, strict=True):
        assert {a["label"]: pytest.approx(a["score"], abs=1e-5) for a in answer} == row["topics"]["probabilities"]


@pytest.mark.parametrize("task", ["similarity", "rank"])
def test_score_pipeline_gives_predicts_raw_score(model, tok, task):
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    rows, _ = predict_rows(model, tok, [{"text": a, "text_b": b} for a, b in pairs], [task])
    answers = _pipe("text-classification", model, task, tok)([{"text": a, "text_pair": b} for a, b in pairs])
    assert [a["score"] for a in answers] == pytest.approx([r[task]["score"] for r in rows], abs=1e-5)


def test_token_classification_pipeline_gives_predicts_entity_spans(model, tok):
    rows, _ = predict_rows(model, tok, [{"text": t} for t in TEXTS], ["ner"])
    pipe = pipeline("token-classification", model=task_model(model, "ner"), tokenizer=tok,
                    aggregation_strategy="first")  # a word's tag is its first sub-token's, as predict does
    answers = [pipe(t) for t in TEXTS]
    assert sum(len(r["ner"]["entities"]) for r in rows) >= 3
    for text, answer, row in zip(TEXTS, answers, rows, strict=True):
        got = [(e["entity_group"], e["start"], e["end"]) for e in answer]
        assert got == [(e["label"], e["start"], e["end"]) for e in row["ner"]["entities"]], text


def test_qa_view_logits_give_predicts_answer_span(model, tok):
    question = "who is where"
    [row], _ = predict_rows(model, tok, [{"question": question, "context": CONTEXT}], ["qa"])
    enc = tok(question, CONTEXT, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = task_model(model, "qa")(**enc)
    # independent decoding: every (start, end) over context tokens, end >= start, at most 30 tokens
    context = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    s, e = out.start_logits[0], out.end_logits[0]
    best = max(((s[a] + s.new_tensor(0) + e[b]).item(), a, b) for a in context for b in context if 0 <= b - a < 30)
    start, end = offsets[best[1]][0], offsets[best[2]][1]
    assert (row["qa"]["start"], row["qa"]["end"], row["qa"]["answer"]) == (start, end, CONTEXT[start:end])


def test_view_of_an_unknown_task_names_the_tasks(model):
    with pytest.raises(KeyError, match="sentiment"):
        task_model(model, "nope")
    with pytest.raises(NotImplementedError, match="save_pretrained"):
        task_model(model, "sentiment").save_pretrained("unused")
