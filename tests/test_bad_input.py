"""Bad input to a forward or a task name gets an error that names it, never a raw torch error or a guess."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, tiny_batch, tiny_model

from pal_adapters import AdapterConfig, TaskConfig, add_pal
from pal_adapters.inject import MAX_TASK_NAME
from pal_adapters.inputs import max_length

ADAPTER = AdapterConfig(kind="pal", hidden_size=8, num_heads=2, dropout=0.0)


def build(arch: str = "bert", **kw):
    return add_pal(tiny_model(arch, **kw), {"a": TaskConfig(dropout=0.0), "b": TaskConfig(num_labels=3, dropout=0.0)},
                   adapter=ADAPTER).eval()


@pytest.fixture(scope="module")
def model():
    return build()


# ---- empty batches -------------------------------------------------------------------------------
EMPTY_CALLS = {
    "one_task": lambda m, x: m(**x, task="a"),
    "default_task": lambda m, x: m(**x),
    "mixed": lambda m, x: m(**x, task_ids=[]),
    "predict_all": lambda m, x: m.predict_all(**x),
}


@pytest.mark.parametrize("shape", [(0, 8), (3, 0)], ids=["no_rows", "no_tokens"])
@pytest.mark.parametrize("call", list(EMPTY_CALLS))
def test_an_empty_batch_is_named_in_every_form(model, call, shape):
    batch = {"input_ids": torch.ones(shape, dtype=torch.long), "attention_mask": torch.ones(shape, dtype=torch.long)}
    model.set_task("a")
    with pytest.raises(ValueError, match=rf"empty batch: input_ids has shape \({shape[0]}, {shape[1]}\)"):
        EMPTY_CALLS[call](model, batch)


def test_input_ids_of_the_wrong_rank_are_named(model):
    with pytest.raises(ValueError, match=r"input_ids must have 2 dimensions .* got shape \(8,\)"):
        model(input_ids=torch.ones(8, dtype=torch.long), task="a")


# ---- sequences longer than the position table ----------------------------------------------------
TABLE_ARCHS = {  # architecture -> first position id (RoBERTa-style embeddings count from padding_idx + 1)
    "bert": 0, "electra": 0, "distilbert": 0, "albert": 0, "deberta-v2": 0, "roberta": 2, "xlm-roberta": 2, "mpnet": 2,
}


@pytest.mark.parametrize("arch", list(TABLE_ARCHS))
def test_a_sequence_longer_than_the_position_table_names_the_limit(arch):
    model = build(arch, max_position_embeddings=16)
    limit = 16 - TABLE_ARCHS[arch]
    assert max_length(model.backbone) == limit
    fits, too_long = (tiny_batch(batch=2, length=n, pad_rows=()) for n in (limit, limit + 1))
    for batch in (fits, too_long):
        batch["input_ids"][:, 0] = 5  # not the padding id, which RoBERTa-style embeddings give no position
    assert model(**fits, task="a").logits.shape == (2, 2)  # exactly the limit still runs
    with pytest.raises(Exception) as raw:  # the limit is the encoder's own: one more token breaks it
        model.backbone(**too_long)
    assert "pal_adapters" not in str(raw.value)
    for call in (lambda: model(**too_long, task="a"), lambda: model(**too_long, task_ids=["a", "b"]),
                 lambda: model.predict_all(**too_long)):
        with pytest.raises(ValueError, match=rf"{limit + 1} tokens .* allows \({limit} tokens.*truncat"):
            call()


def test_rotary_encoders_have_no_position_limit():
    model = build("modernbert", max_position_embeddings=16)
    assert max_length(model.backbone) is None
    assert model(**tiny_batch(batch=2, length=20, pad_rows=()), task="a").logits.shape == (2, 2)


# ---- token ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 7, -1])
def test_token_ids_outside_the_vocabulary_are_named(model, bad):
    batch = tiny_batch(batch=2)
    batch["input_ids"][1, 3] = bad
    with pytest.raises(ValueError, match=rf"outside the vocabulary 0..{VOCAB - 1}: \[{bad}\]"):
        model(**batch, task="a")
    with pytest.raises(ValueError, match=r"outside the vocabulary"):
        model.predict_all(**batch)


def test_float_input_ids_are_refused(model):
    batch = tiny_batch(batch=2)
    with pytest.raises(TypeError, match=r"input_ids must be integer token ids; got a torch.float32 tensor"):
        model(input_ids=batch["input_ids"].float(), task="a")


# ---- task_ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_ids, message", [
    (torch.tensor([0.0, 1.0, 1.0]), r"integer task indices .* got a torch.float32 tensor"),
    (torch.tensor([True, False, True]), r"got a torch.bool tensor"),
    ([0, 1.0, 1], r"task_ids\[1\]=1.0: expected a task name or an integer index into \['a', 'b'\]"),
    ([0, 1, 0.7], r"task_ids\[2\]=0.7"),
    (["a", True, "b"], r"task_ids\[1\]=True"),
    ("aba", r"task_ids='aba' is one string; pass one task name per example .* or task='aba'"),
    (1, r"task_ids must be a list or tensor with one task per example; got 1"),
])
def test_task_ids_that_are_not_names_or_integers_are_refused(model, task_ids, message):
    with pytest.raises(TypeError, match=message):
        model(**tiny_batch(batch=3), task_ids=task_ids)


def test_integer_like_task_ids_still_work(model):
    import numpy as np

    batch = tiny_batch(batch=3)
    by_name = model(**batch, task_ids=["b", "a", "b"]).logits
    for ids in (np.array([1, 0, 1]), [torch.tensor(1), 0, np.int64(1)], torch.tensor([[1], [0], [1]])):
        got = model(**batch, task_ids=ids).logits
        assert all(torch.equal(got[t], by_name[t]) for t in by_name)


def test_predict_all_task_lists_are_checked(model):
    batch = tiny_batch(batch=2)
    with pytest.raises(TypeError, match=r"tasks='ab' is one string; pass a list of task names"):
        model.predict_all(tasks="ab", **batch)
    with pytest.raises(ValueError, match=r"predict_all needs at least one task; this model's tasks: \['a', 'b'\]"):
        model.predict_all(tasks=[], **batch)


# ---- task names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["router", "training", "keys", "forward", "items", "train", "pop", "_modules",
                                  "resolved", "to"])
def test_task_names_that_are_module_attributes_are_refused_and_change_nothing(name):
    model = build()
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=rf"task name '{name}' is reserved: it is an attribute of AdapterBank"):
        model.add_task(name, 2)
    assert model.task_names == ["a", "b"] and set(model.state_dict()) == keys and name not in model.heads
    with pytest.raises(ValueError, match=rf"task name '{name}' is reserved"):
        add_pal(tiny_model("bert"), {name: 2})


def test_task_names_longer_than_a_folder_name_allows_are_refused(tmp_path):
    model = build()
    with pytest.raises(ValueError, match=rf"has {MAX_TASK_NAME + 1} characters; .* at most {MAX_TASK_NAME}"):
        model.add_task("t" * (MAX_TASK_NAME + 1), 2)
    longest = "t" * MAX_TASK_NAME
    model.add_task(longest, 2)
    model.save_pretrained(tmp_path / "saved")  # a task is a folder named after it
    assert (tmp_path / "saved" / "tasks" / longest).is_dir()


def test_token_ids_added_by_resizing_the_embeddings_are_accepted():
    model = build()
    batch = tiny_batch(batch=2)
    batch["input_ids"][0, 2] = VOCAB + 3
    with pytest.raises(ValueError, match=r"outside the vocabulary"):
        model(**batch, task="a")
    model.backbone.resize_token_embeddings(VOCAB + 4)
    assert model(**batch, task="a").logits.shape == (2, 2)
