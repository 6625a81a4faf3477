"""Which input rows a task reads: one rule (``tasks/rows.py`` + ``TaskKind.input_problem``) for
``predict_rows``, the CLI and the server."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_adapters, tiny_model, word_tokenizer
from transformers import BertTokenizerFast

from pal_adapters import TaskConfig, add_pal
from pal_adapters.predict import predict_rows
from pal_adapters.tasks import kind_of
from pal_adapters.tasks.rows import row_problem
from pal_adapters.training.sources import DataSource
from pal_adapters.training.taskdefs import TaskDef

WORDS = ["alpha", "bravo", "charlie", "delta", "who", "is"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("vocab"), WORDS)


@pytest.mark.parametrize("row, problem", [
    ({"text": ""}, "field 'text' is empty"),
    ({"text": "alpha", "text_b": "  \n"}, "field 'text_b' is empty"),
    ({"text": 3}, "field 'text' must be a string, not int 3"),
    ({"text_b": "alpha"}, "this one has ['text_b']"),
    ({"question": "who"}, "this one has ['question']"),
    ({"id": 1}, "this one has none of the fields"),
    ("alpha", "an input must be an object"),
    ({"text": "alpha", "question": "who", "context": "alpha"}, "this one has ['text', 'question', 'context']"),
])
def test_a_row_no_task_can_read_is_named_by_its_field(row, problem):
    assert problem in row_problem(row)


@pytest.mark.parametrize("task, row, problem", [
    (TaskConfig(inputs="text"), {"text": "a", "text_b": "b"}, "reads one text ('text'); this input is a text pair"),
    (TaskConfig(inputs="pair"), {"text": "alpha"}, "reads a text pair ('text' and 'text_b'); this input is one text"),
    (TaskConfig(type="token_classification", num_labels=3), {"text": "a", "text_b": "b"}, "reads one text"),
    (TaskConfig(type="extractive_qa"), {"text": "alpha"}, "reads a question and a context"),
    (TaskConfig(), {"question": "who", "context": "alpha"}, "reads one text ('text') or a text pair"),
])
def test_a_task_refuses_a_form_it_does_not_read(task, row, problem):
    assert problem in kind_of(task).input_problem(row)


def test_a_task_that_records_no_form_reads_a_text_or_a_pair():
    kind = kind_of(TaskConfig())  # a task added from Python, or a version-2 save
    assert kind.input_problem({"text": "alpha"}) is None and kind.input_problem({"text": "a", "text_b": "b"}) is None


def test_training_records_the_form_from_the_data_text_columns():
    one = DataSource(kind="jsonl", path="x", text_columns=("s",), label_column="y")
    two = DataSource(kind="jsonl", path="x", text_columns=("s1", "s2"), label_column="y")
    assert TaskDef("a", TaskConfig(), one).task.inputs == "text"
    assert TaskDef("b", TaskConfig(), two).task.inputs == "pair"
    with pytest.raises(ValueError, match=r"inputs='text' disagrees with the data's text columns \['s1', 's2'\]"):
        TaskDef("c", TaskConfig(inputs="text"), two)


def test_predict_rows_skips_unreadable_tasks_refuses_them_by_name_and_never_answers_nothing(tokenizer):
    model = add_pal(tiny_model("bert", vocab_size=len(tokenizer)), tasks={
        "one": TaskConfig(inputs="text"), "pair": TaskConfig(num_labels=3, inputs="pair"),
        "qa": TaskConfig(type="extractive_qa")}).eval()
    randomize_adapters(model)
    rows = [{"text": "alpha bravo", "text_b": "charlie"}]
    predictions, skipped = predict_rows(model, tokenizer, rows)
    assert list(predictions[0]) == ["pair"] and set(skipped) == {"one", "qa"}
    assert "reads one text" in skipped["one"] and "reads a question and a context" in skipped["qa"]
    enc = tokenizer(["alpha bravo"], ["charlie"], return_tensors="pt")
    with torch.no_grad():
        want = model(**enc, task="pair").logits.softmax(-1)[0].tolist()
    assert list(predictions[0]["pair"]["probabilities"].values()) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="task 'one' cannot read these inputs: .*reads one text"):
        predict_rows(model, tokenizer, rows, tasks=["pair", "one"])
    with pytest.raises(ValueError, match="input 1: field 'text' is empty"):
        predict_rows(model, tokenizer, [{"text": "alpha"}, {"text": " "}])
    single = add_pal(tiny_model("bert", vocab_size=len(tokenizer)), tasks={"one": TaskConfig(inputs="text")})
    with pytest.raises(ValueError, match="no task of this model can read these inputs .one: .*reads one text"):
        predict_rows(single, tokenizer, rows)


def test_predict_rows_uses_each_task_s_own_max_length(tokenizer):
    model = add_pal(tiny_model("bert", vocab_size=len(tokenizer)), tasks={
        "short": TaskConfig(inputs="text", max_length=4), "long": TaskConfig(inputs="text", max_length=64)}).eval()
    randomize_adapters(model)
    text = " ".join(WORDS * 3)
    predictions, _ = predict_rows(model, tokenizer, [{"text": text}])
    for task, limit in (("short", 4), ("long", 64)):
        enc = tokenizer([text], truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            want = model(**enc, task=task).logits.softmax(-1)[0].tolist()
        assert list(predictions[0][task]["probabilities"].values()) == pytest.approx(want, abs=1e-6)
    assert predictions[0]["short"] != predictions[0]["long"]
