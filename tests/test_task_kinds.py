"""The task-kind registry: contents, checks at TaskConfig time, losses, label validation, a new kind."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_batch, tiny_model

from pal_adapters import TaskConfig, add_pal
from pal_adapters.tasks import TASK_KINDS, TaskKind, get_kind, kind_of, register_kind
from pal_adapters.tasks.labels import zero_loss
from pal_adapters.training.evaluate import evaluate
from pal_adapters.training.taskdefs import load_task_defs

DATA = {"kind": "jsonl", "path": "x", "text_columns": ["text"]}
ALL_KINDS = ["classification", "regression", "multi_label", "ranking", "token_classification", "extractive_qa"]


def test_registry_holds_every_kind_under_its_own_name() -> None:
    assert list(TASK_KINDS) == ALL_KINDS
    for name, cls in TASK_KINDS.items():
        assert issubclass(cls, TaskKind) and cls.name == name and get_kind(name) is cls
    assert [n for n, c in TASK_KINDS.items() if c.token_level] == ["token_classification", "extractive_qa"]
    assert sorted(n for n, c in TASK_KINDS.items() if c.distillable) == ["classification", "regression"]


def test_unknown_type_is_rejected_when_the_task_is_defined_naming_the_kinds() -> None:
    with pytest.raises(ValueError, match=r"type='tagging' is not valid; choose one of 'classification', "
                                         r"'regression', .*'extractive_qa'"):
        TaskConfig(type="tagging")
    with pytest.raises(ValueError, match="type='tagging' is not valid"):
        load_task_defs({"tasks": {"t": {"type": "tagging", "data": DATA}}})


@pytest.mark.parametrize(("spec", "message"), [
    (dict(type="regression", num_labels=3), "num_labels=3 does not fit type='regression', which needs num_labels=1"),
    (dict(type="extractive_qa", num_labels=3), "which needs num_labels=2"),
    (dict(type="ranking"), "a ranking task needs num_candidates >= 2"),
    (dict(type="ranking", num_candidates=1), "num_candidates=1"),
    (dict(type="classification", num_candidates=3), "only used by type='ranking'"),
    (dict(type="classification", num_labels=3, labels=["a", "b"]), "has 2 names but num_labels=3"),
])
def test_kinds_check_their_own_config_fields(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        TaskConfig(**spec)


def test_fixed_label_counts_resolve_from_the_kind() -> None:
    resolved = {t: TaskConfig(type=t, num_candidates=2 if t == "ranking" else None).num_labels for t in ALL_KINDS}
    assert resolved == {"classification": 2, "regression": 1, "multi_label": 2, "ranking": 1,
                        "token_classification": 2, "extractive_qa": 2}


# ---- losses against independent formulas ---------------------------------------------------------
LOGITS = [[1.0, -0.5, 2.0], [0.3, 0.2, -1.0], [-2.0, 1.5, 0.0], [0.0, 0.0, 0.0]]


def log_softmax(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def hand_loss(kind: str) -> float:
    if kind == "classification":  # labels 2, 0, 1, -100 (skipped)
        return -(log_softmax(LOGITS[0])[2] + log_softmax(LOGITS[1])[0] + log_softmax(LOGITS[2])[1]) / 3
    if kind == "regression":
        preds, gold = [0.5, 1.0, -2.0, 3.0], [1.0, 1.0, 0.0, 2.5]
        return sum((p - y) ** 2 for p, y in zip(preds, gold, strict=True)) / 4
    if kind == "multi_label":
        gold = [[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]]
        terms = [y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x)))
                 for row, yrow in zip(LOGITS, gold, strict=True) for x, y in zip(row, yrow, strict=True)]
        return -sum(terms) / len(terms)
    scores = [0.5, 1.0, -2.0, 3.0]  # ranking, groups of 2: positives at rows 1 and 2
    return -(log_softmax(scores[:2])[1] + log_softmax(scores[2:])[0]) / 2


def loss_inputs(kind: str) -> tuple[TaskConfig, torch.Tensor, torch.Tensor]:
    if kind == "classification":
        return TaskConfig(num_labels=3), torch.tensor(LOGITS), torch.tensor([2, 0, 1, -100])
    if kind == "regression":
        return TaskConfig(type=kind), torch.tensor([0.5, 1.0, -2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 2.5])
    if kind == "multi_label":
        gold = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]]).float()
        return TaskConfig(type=kind, num_labels=3), torch.tensor(LOGITS), gold
    return TaskConfig(type=kind, num_candidates=2), torch.tensor([0.5, 1.0, -2.0, 3.0]), torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize("kind", ["classification", "regression", "multi_label", "ranking"])
def test_each_kinds_loss_matches_its_formula(kind) -> None:
    task, logits, labels = loss_inputs(kind)
    assert kind_of(task).loss(logits, labels).item() == pytest.approx(hand_loss(kind), rel=1e-6)


# ---- label validation (issue 9 §3) ----------------------------------------------------------------
def test_regression_labels_as_a_list_or_of_the_wrong_shape_are_errors() -> None:
    kind, preds = kind_of(TaskConfig(type="regression")), torch.tensor([0.5, 1.0, -2.0])
    with pytest.raises(TypeError, match="regression labels must be a torch.Tensor, got list"):
        kind.loss(preds, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"shape \(4,\); expected \(3,\) or \(3, 1\)"):
        kind.loss(preds, torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        kind.loss(preds, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        kind.loss(preds, torch.zeros(1, 3))


def test_regression_labels_of_shape_n_by_1_are_flattened_not_broadcast() -> None:
    kind, preds = kind_of(TaskConfig(type="regression")), torch.tensor([0.5, 1.0, -2.0])
    gold = torch.tensor([1.0, 1.0, 0.0])
    expected = ((0.5 - 1.0) ** 2 + 0 + 4.0) / 3  # a broadcast (3, 3) loss would be another number
    assert kind.loss(preds, gold[:, None]).item() == pytest.approx(expected)
    assert kind.loss(preds, gold).item() == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_non_integer_class_labels_are_errors_not_truncated(dtype) -> None:
    kind = kind_of(TaskConfig(num_labels=3))
    with pytest.raises(TypeError, match=rf"dtype {dtype}; expected integer class ids"):
        kind.loss(torch.tensor(LOGITS), torch.tensor([1.7, 0.0, 2.0, 1.0]).to(dtype))


def test_class_labels_out_of_range_or_of_the_wrong_shape_are_errors() -> None:
    kind = kind_of(TaskConfig(num_labels=3))
    with pytest.raises(ValueError, match=r"hold \[3\]; expected class ids in 0..2"):
        kind.loss(torch.tensor(LOGITS), torch.tensor([0, 3, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(4, 1\); expected \(4,\)"):
        kind.loss(torch.tensor(LOGITS), torch.tensor([[0], [1], [1], [2]]))
    multi = kind_of(TaskConfig(type="multi_label", num_labels=3))
    with pytest.raises(ValueError, match=r"multi_label labels have shape \(4,\); expected \(4, 3\)"):
        multi.loss(torch.tensor(LOGITS), torch.tensor([0, 1, 1, 2]))


def test_a_batch_whose_labels_are_all_ignored_has_zero_loss_and_zero_gradient() -> None:
    """Documented choice: 0 connected to the graph (backward works), never NaN, no gradient effect."""
    model = add_pal(tiny_model("bert"), {"cls": 3}, adapter="pal")
    batch = tiny_batch(batch=3)
    loss = model(**batch, task="cls", labels=torch.full((3,), -100)).loss
    assert loss.item() == 0.0 and not math.copysign(1.0, loss.item()) < 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    logits = torch.randn(2, 3, requires_grad=True)
    zero_loss(logits).backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))


# ---- adding a kind: one module + one registry row ------------------------------------------------
def sign_accuracy(preds: np.ndarray, refs: np.ndarray) -> float:
    return float(np.mean(preds == refs))


class SignKind(TaskKind):
    """A toy kind: one score per row, label 1 when the score should be positive (logistic loss)."""

    name = "sign"
    fixed_num_labels = 1
    uses_label_names = False
    metrics = MappingProxyType({"accuracy": sign_accuracy})
    default_metrics = ("accuracy",)
    options = MappingProxyType({"threshold": 0.0})

    def shape_logits(self, logits):
        return logits.squeeze(-1)

    def loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def label_converter(self, label_map):
        return lambda value: int(value)

    def finish(self, outputs):
        scores = torch.cat([lg for lg, _ in outputs])
        return (scores > self.options["threshold"]).long().numpy(), torch.cat([y for _, y in outputs]).numpy()


@pytest.fixture
def sign_kind():
    register_kind(SignKind)
    yield SignKind
    del TASK_KINDS["sign"]


def test_a_registered_kind_trains_and_evaluates_through_the_model(sign_kind) -> None:
    torch.manual_seed(0)
    model = add_pal(tiny_model("bert"), {"s": {"type": "sign", "dropout": 0.0}, "c": 2}, adapter="pal")
    assert model.heads["s"].out.out_features == 1 and not model.heads["s"].token_level
    batch = tiny_batch(batch=8, pad_rows=())
    labels = (batch["input_ids"][:, 1] % 2).long()  # learnable from the first word
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = float(model(**batch, task="s", labels=labels).loss.detach())
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch, task="s", labels=labels).loss.backward()
        optimizer.step()
    assert float(model(**batch, task="s", labels=labels).loss.detach()) < before / 2
    results = evaluate(model, {"s": [batch | {"labels": labels}]}, {"s": ["accuracy"]})
    assert results == {"s": {"accuracy": 1.0}}
    with pytest.raises(ValueError, match="'sign' cannot be distilled"):
        model.heads["s"].kind.teacher_targets(torch.zeros(2))


def test_a_task_definition_passes_options_to_its_kind_and_rejects_unknown_ones(sign_kind) -> None:
    data = DATA
    defs = load_task_defs({"tasks": {"s": {"type": "sign", "options": {"threshold": 0.5}, "data": data}}})
    assert defs["s"].kind.options["threshold"] == 0.5 and defs["s"].metrics == ("accuracy",)
    with pytest.raises(ValueError, match=r"options \['stride'\] are not known to task type 'sign'; valid "
                                         r"options: \['threshold'\]"):
        load_task_defs({"tasks": {"s": {"type": "sign", "options": {"stride": 2}, "data": data}}})
    with pytest.raises(ValueError, match=r"metric='f1' does not fit type='sign'; choose from \['accuracy'\]"):
        load_task_defs({"tasks": {"s": {"type": "sign", "metrics": ["f1"], "data": data}}})


def test_registering_another_class_under_a_taken_name_is_refused() -> None:
    class Other(TaskKind):
        name = "classification"

    with pytest.raises(ValueError, match="'classification' is already registered to ClassificationKind"):
        register_kind(Other)
    with pytest.raises(TypeError, match="not a TaskKind subclass"):
        register_kind(int)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_model_with_every_kind_survives_deepcopy_and_pickle(how: str) -> None:
    import copy
    import pickle

    from helpers import randomize_adapters

    tasks = {"cls": 2, "reg": "regression", "qa": "extractive_qa",
             "ner": {"type": "token_classification", "num_labels": 3, "labels": ["O", "B-X", "I-X"]}}
    model = add_pal(tiny_model("bert"), tasks).eval()
    randomize_adapters(model.backbone)
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    batch = tiny_batch()
    for name in tasks:
        assert twin.heads[name].kind.options == model.heads[name].kind.options
        assert torch.equal(twin(**batch, task=name).logits, model(**batch, task=name).logits)
    with torch.no_grad():  # the twin owns its weights: changing them leaves the original alone
        next(twin.heads["cls"].parameters()).add_(1.0)
    assert not torch.equal(twin(**batch, task="cls").logits, model(**batch, task="cls").logits)
