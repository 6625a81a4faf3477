"""The multi-task model: routing one-task and mixed batches, predict_all, adding/removing tasks."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, randomize_adapters, tiny_batch, tiny_model

from pal_adapters import AdapterConfig, TaskConfig, add_pal

ADAPTER = AdapterConfig(kind="pal", lhuc=True, output_activation="gelu", hidden_size=8, num_heads=2, dropout=0.0)

# One task of every head type, with labels for a batch of rows.
TASKS = {
    "cls": TaskConfig(type="classification", num_labels=3, dropout=0.0),
    "reg": TaskConfig(type="regression", dropout=0.0, pooling="mean"),
    "multi": TaskConfig(type="multi_label", num_labels=4, dropout=0.0),
    "rank": TaskConfig(type="ranking", num_candidates=2, dropout=0.0),
    "tok": TaskConfig(type="token_classification", num_labels=5, dropout=0.0),
    "qa": TaskConfig(type="extractive_qa", dropout=0.0),
}


def labels_for(task: str, n: int, length: int, g: torch.Generator) -> torch.Tensor:
    kind = TASKS[task].type
    if kind == "classification":
        return torch.randint(0, 3, (n,), generator=g)
    if kind == "regression":
        return torch.rand(n, generator=g) * 5
    if kind == "multi_label":
        return torch.randint(0, 2, (n, 4), generator=g).float()
    if kind == "ranking":
        return torch.tensor([1, 0] * (n // 2), dtype=torch.float)
    if kind == "token_classification":
        y = torch.randint(0, 5, (n, length), generator=g)
        y[:, -2:] = -100
        return y
    return torch.randint(0, length, (n, 2), generator=g)


def build(arch="bert", layers="all", tasks=TASKS, freeze=True, **kw):
    model = add_pal(tiny_model(arch, **kw), tasks, adapter=ADAPTER.replace(layers=layers), freeze_backbone=freeze)
    randomize_adapters(model)
    return model.eval()


# Rows of a mixed batch: task per row (ranking rows in consecutive pairs).
MIXED = ["cls", "tok", "rank", "rank", "reg", "cls", "multi", "qa", "rank", "rank", "tok", "qa"]


def test_mixed_batch_equals_per_task_forwards_for_every_head_type():
    model = build()
    batch = tiny_batch(batch=len(MIXED), length=8, pad_rows=(1, 4, 7))
    g = torch.Generator().manual_seed(0)
    labels = {t: labels_for(t, MIXED.count(t), 8, g) for t in TASKS}
    mixed = model(**batch, task_ids=MIXED, labels=labels)
    assert set(mixed.task_losses) == set(TASKS)
    for task in TASKS:
        rows = torch.tensor([i for i, t in enumerate(MIXED) if t == task])
        torch.testing.assert_close(mixed.task_rows[task], rows)
        alone = model(**{k: v[rows] for k, v in batch.items()}, task=task, labels=labels[task])
        torch.testing.assert_close(mixed.logits[task], alone.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed.task_losses[task], alone.loss, rtol=1e-5, atol=1e-6)
    expected_total = sum(mixed.task_losses[t] * MIXED.count(t) / len(MIXED) for t in TASKS)
    torch.testing.assert_close(mixed.loss, expected_total)


def test_mixed_batch_gradients_equal_per_task_gradients():
    model = build(freeze=False).train()  # dropout is 0 everywhere, so train mode is deterministic
    batch = tiny_batch(batch=len(MIXED), length=8, pad_rows=(2, 5))
    g = torch.Generator().manual_seed(1)
    labels = {t: labels_for(t, MIXED.count(t), 8, g) for t in TASKS}

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    mixed = grads(sum(model(**batch, task_ids=MIXED, labels=labels).task_losses.values()))
    total = 0
    for task in TASKS:
        rows = torch.tensor([i for i, t in enumerate(MIXED) if t == task])
        total = total + model(**{k: v[rows] for k, v in batch.items()}, task=task, labels=labels[task]).loss
    separate = grads(total)
    assert mixed.keys() == separate.keys() and any("pal_adapters" in n for n in mixed)
    for name in mixed:
        torch.testing.assert_close(mixed[name], separate[name], rtol=1e-4, atol=1e-6, msg=name)


def test_task_ids_accept_indices_and_a_label_tensor():
    model = build(tasks={"a": TaskConfig(num_labels=2, dropout=0.0), "b": TaskConfig(num_labels=2, dropout=0.0)})
    batch = tiny_batch(batch=4)
    labels = torch.tensor([0, 1, 1, 0])
    by_name = model(**batch, task_ids=["b", "a", "b", "a"], labels=labels)
    by_index = model(**batch, task_ids=torch.tensor([1, 0, 1, 0]), labels=labels)
    torch.testing.assert_close(by_name.loss, by_index.loss)
    alone = model(input_ids=batch["input_ids"][[0, 2]], attention_mask=batch["attention_mask"][[0, 2]], task="b",
                  labels=labels[[0, 2]])
    torch.testing.assert_close(by_name.task_losses["b"], alone.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", ["all", "top_half"])
def test_predict_all_equals_each_task_alone(arch, layers):
    tasks = {"cls": TASKS["cls"], "reg": TASKS["reg"], "tok": TASKS["tok"]}
    extra = {"n_layers": 4} if arch == "distilbert" else {"num_hidden_layers": 4}
    model = build(arch, layers=layers, tasks=tasks, **extra)
    batch = tiny_batch(batch=3, length=8)
    every = model.predict_all(**batch)
    assert set(every) == set(tasks)
    for task in tasks:
        torch.testing.assert_close(every[task], model(**batch, task=task).logits, rtol=1e-5, atol=1e-5)


def test_predict_all_with_tasks_adapting_different_depths():
    model = build(tasks={"a": TaskConfig(dropout=0.0)}, num_hidden_layers=4)
    model.add_task("b", TaskConfig(dropout=0.0, adapter=ADAPTER.replace(layers=(3,))))
    model.add_task("c", TaskConfig(dropout=0.0, adapter=AdapterConfig(kind="lhuc", layers="top_half")))
    randomize_adapters(model)
    batch = tiny_batch()
    every = model.predict_all(**batch)
    for task in "abc":
        torch.testing.assert_close(every[task], model(**batch, task=task).logits, rtol=1e-5, atol=1e-5)


def test_adding_and_removing_tasks_leaves_other_tasks_bit_identical():
    model = build(tasks={"a": TASKS["cls"], "b": TASKS["reg"]})
    batch = tiny_batch()
    before = {t: model(**batch, task=t).logits for t in ("a", "b")}
    model.add_task("c", TASKS["multi"])
    with torch.no_grad():  # make the new task's adapters act, so it is not trivially identity
        for p in list(model.bank["c"].parameters()) + list(model.heads["c"].parameters()):
            p.normal_(0, 0.5)
    assert (model(**batch, task="c").logits - 0).abs().sum() > 0
    mixed = model(**batch, task_ids=["c", "a", "b"])
    after_add = {t: model(**batch, task=t).logits for t in ("a", "b")}
    model.remove_task("c")
    after_remove = {t: model(**batch, task=t).logits for t in ("a", "b")}
    for t in ("a", "b"):
        assert torch.equal(after_add[t], before[t]) and torch.equal(after_remove[t], before[t])
    torch.testing.assert_close(mixed.logits["a"], before["a"][1:2], rtol=1e-5, atol=1e-6)
    assert "c" not in model.heads and "c" not in model.bank and model.task_names == ["a", "b"]


@pytest.mark.parametrize("error", [RuntimeError("no head today"), KeyboardInterrupt()])
def test_a_task_is_added_whole_or_not_at_all_and_tasks_is_a_view_of_it(monkeypatch, error):
    import pal_adapters.model as model_module

    model = build(tasks={"a": TASKS["cls"]})
    assert model.tasks == {"a": TASKS["cls"]} and model.tasks["a"] is model.heads["a"].task
    with pytest.raises(TypeError):
        model.tasks["b"] = TASKS["reg"]  # read-only: tasks change through add_task / remove_task

    def broken(*args, **kwargs):  # fails after the task's adapters were added
        raise error

    monkeypatch.setattr(model_module, "TaskHead", broken)
    with pytest.raises(type(error)):
        model.add_task("b", TASKS["reg"])
    assert list(model.bank) == list(model.heads) == list(model.tasks) == ["a"]
    monkeypatch.undo()
    model.add_task("b", TASKS["reg"])  # nothing half-added blocks the retry
    assert list(model.bank) == list(model.heads) == model.task_names == ["a", "b"]


def test_set_task_and_use_task_route_calls_without_a_task_argument():
    model = build(tasks={"a": TASKS["cls"], "b": TASKS["cls"]})
    batch = tiny_batch()
    with model.use_task("b"):
        via_context = model(**batch).logits
    model.set_task("a")
    via_set = model(**batch).logits
    torch.testing.assert_close(via_context, model(**batch, task="b").logits)
    torch.testing.assert_close(via_set, model(**batch, task="a").logits)
    model.set_task(None)
    with pytest.raises(ValueError, match=r"no task given: pass task= or task_ids=.*\['a', 'b'\]"):
        model(**batch)


def test_routing_errors_name_the_bad_value():
    model = build(tasks={"a": TASKS["cls"], "b": TASKS["reg"]})
    batch = tiny_batch(batch=3)
    with pytest.raises(KeyError, match=r"unknown task 'z'; this model's tasks: \['a', 'b'\]"):
        model(**batch, task="z")
    with pytest.raises(KeyError, match=r"unknown task 'z'"):
        model(**batch, task_ids=["a", "z", "b"])
    with pytest.raises(ValueError, match=r"task_ids has 2 entries but the batch has 3"):
        model(**batch, task_ids=["a", "b"])
    with pytest.raises(ValueError, match=r"task_ids must lie in 0..1.*got \[0, 5\]"):
        model(**batch, task_ids=torch.tensor([0, 5, 0]))
    with pytest.raises(ValueError, match=r"pass either task="):
        model(**batch, task="a", task_ids=["a", "a", "a"])
    with pytest.raises(ValueError, match=r"pooling='pooler' but DistilBertModel has no pooler"):
        add_pal(tiny_model("distilbert"), {"a": TaskConfig(pooling="pooler")})
    with pytest.raises(ValueError, match=r"num_labels=3 does not fit type='regression'"):
        TaskConfig(type="regression", num_labels=3)


@pytest.mark.parametrize(("kind", "labels", "want"), [
    ("classification", ("neg", "neu", "pos"), 3),
    ("token_classification", ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), 5),
    ("multi_label", ("x", "y", "z", "w"), 4), ("classification", None, 2), ("regression", None, 1),
])
def test_num_labels_comes_from_the_label_names_when_not_given(kind, labels, want):
    assert TaskConfig(type=kind, labels=labels).num_labels == want
    if labels:  # given and in disagreement: still an error naming both
        with pytest.raises(ValueError, match=rf"has {len(labels)} names but num_labels={want + 1}"):
            TaskConfig(type=kind, labels=labels, num_labels=want + 1)


def test_parameter_report_counts_heads_and_adapters_per_task():
    model = build(tasks={"a": TASKS["cls"], "b": TASKS["reg"]})
    report = model.parameter_report()
    assert report.heads == {"a": 32 * 3 + 3, "b": 32 + 1}
    assert report.adapters["a"] == sum(p.numel() for p in model.bank["a"].parameters())
    assert report.trainable == sum(report.adapters.values()) + sum(report.heads.values())


def test_ranking_labels_without_one_positive_per_group_name_the_groups():
    model = build(tasks={"rank": TASKS["rank"]})
    batch = tiny_batch(batch=4)
    message = r"one positive \(1, the rest 0\) per group of 2 rows; groups \[1\] have \[2\]"
    with pytest.raises(ValueError, match=message):
        model(**batch, task="rank", labels=torch.tensor([1.0, 0.0, 1.0, 1.0]))
