from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import randomize_adapters, tiny_batch, tiny_model
from scipy import stats
from sklearn import metrics as skm

from pal_adapters import add_pal
from pal_adapters.model import MultiTaskOutput
from pal_adapters.training.evaluate import combined_score, evaluate, predict_task

TASKS = {
    "cls": 3,
    "reg": "regression",
    "ml": {"type": "multi_label", "num_labels": 4},
    "tok": {"type": "token_classification", "num_labels": 5},
}


@pytest.fixture(scope="module")
def model():
    m = add_pal(tiny_model("bert"), TASKS, adapter="pal")
    randomize_adapters(m)
    return m


def batches(task: str, sizes=(3, 4)) -> list[dict[str, torch.Tensor]]:
    """Batches of different lengths (as with dynamic padding), with labels fitting ``task``."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i, n in enumerate(sizes):
        b = tiny_batch(batch=n, length=7 + 2 * i, seed=10 + i, pad_rows=(1,))
        b["labels"] = {
            "cls": lambda n=n: torch.randint(0, 3, (n,), generator=g),
            "reg": lambda n=n: torch.rand(n, generator=g) * 5,
            "ml": lambda n=n: torch.randint(0, 2, (n, 4), generator=g).float(),
            "tok": lambda n=n, b=b: torch.randint(0, 5, b["input_ids"].shape, generator=g)
            .masked_fill(b["attention_mask"] == 0, -100),
        }[task]()
        out.append(b)
    return out


def reference_logits(model, task: str, dev: list[dict]) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], task=task).logits for b in dev]


def test_classification_predictions_are_the_argmax_of_eval_logits(model) -> None:
    dev = batches("cls")
    expected = torch.cat([x.argmax(-1) for x in reference_logits(model, "cls", dev)]).numpy()
    model.train()  # the head's dropout would change the logits if predict_task did not switch to eval
    preds, labels = predict_task(model, "cls", dev)
    assert model.training, "train mode must be restored"
    np.testing.assert_array_equal(preds, expected)
    np.testing.assert_array_equal(labels, torch.cat([b["labels"] for b in dev]).numpy())


def test_eval_mode_is_kept_when_the_model_was_in_eval(model) -> None:
    model.eval()
    predict_task(model, "cls", batches("cls"))
    assert not model.training


def test_regression_predictions_are_the_scores(model) -> None:
    dev = batches("reg")
    expected = torch.cat(reference_logits(model, "reg", dev)).numpy()
    preds, labels = predict_task(model, "reg", dev)
    assert preds.dtype.kind == "f" and preds.shape == (7,)
    np.testing.assert_allclose(preds, expected, rtol=1e-6)
    np.testing.assert_allclose(labels, torch.cat([b["labels"] for b in dev]).numpy())


def test_multi_label_predictions_threshold_the_sigmoid(model) -> None:
    dev = batches("ml")
    expected = (torch.sigmoid(torch.cat(reference_logits(model, "ml", dev))) > 0.5).long().numpy()
    preds, labels = predict_task(model, "ml", dev)
    assert preds.shape == labels.shape == (7, 4)
    np.testing.assert_array_equal(preds, expected)
    assert set(np.unique(labels)) <= {0, 1}


def test_evaluate_matches_sklearn_and_scipy_over_the_whole_dev_set(model) -> None:
    dev = {"cls": batches("cls", sizes=(2, 5, 3)), "reg": batches("reg")}
    cls_preds = torch.cat([x.argmax(-1) for x in reference_logits(model, "cls", dev["cls"])]).numpy()
    cls_labels = torch.cat([b["labels"] for b in dev["cls"]]).numpy()
    reg_preds = torch.cat(reference_logits(model, "reg", dev["reg"])).numpy()
    reg_labels = torch.cat([b["labels"] for b in dev["reg"]]).numpy()
    results = evaluate(model, dev, {"cls": ["accuracy", "mcc"], "reg": ["pearson", "spearman"]})
    assert results["cls"]["accuracy"] == pytest.approx(skm.accuracy_score(cls_labels, cls_preds))
    assert results["cls"]["mcc"] == pytest.approx(skm.matthews_corrcoef(cls_labels, cls_preds))
    assert results["reg"]["pearson"] == pytest.approx(stats.pearsonr(reg_preds, reg_labels)[0], rel=1e-5)
    assert results["reg"]["spearman"] == pytest.approx(stats.spearmanr(reg_preds, reg_labels)[0], rel=1e-5)


def stub(model, monkeypatch, logits: list[torch.Tensor]) -> None:
    """Make ``model`` return the given logits, one tensor per call."""
    outputs = iter(logits)
    monkeypatch.setattr(model, "forward", lambda **kw: MultiTaskOutput(logits=next(outputs)))


def ids(n: int, length: int = 5) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.ones(n, length, dtype=torch.long), "attention_mask": torch.ones(n, length)}


def test_metrics_are_computed_once_over_all_batches_not_averaged(monkeypatch) -> None:
    m = add_pal(tiny_model("bert"), {"cls": 2}, adapter="pal")
    # batch 1: 1/1 right, batch 2: 1/3 right -> 2/4 = 0.5 overall (a per-batch mean would give 2/3).
    stub(m, monkeypatch, [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])])
    dev = {"cls": [ids(1) | {"labels": torch.tensor([1])}, ids(3) | {"labels": torch.tensor([1, 1, 1])}]}
    assert evaluate(m, dev, {"cls": ["accuracy"]})["cls"]["accuracy"] == pytest.approx(0.5)


def test_ranking_scores_precision_at_1_and_mrr_per_query(monkeypatch) -> None:
    m = add_pal(tiny_model("bert"), {"rank": {"type": "ranking", "num_candidates": 3}}, adapter="pal")
    stub(m, monkeypatch, [torch.tensor([0.1, 0.9, 0.3, 2.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 5.0])])
    dev = [ids(6) | {"labels": torch.tensor([0, 1, 0, 0, 0, 1])}, ids(3) | {"labels": torch.tensor([0, 0, 1])}]
    scores, positive = predict_task(m, "rank", dev)
    np.testing.assert_array_equal(scores.argmax(-1), [1, 0, 2])
    np.testing.assert_array_equal(positive, [1, 2, 2])
    stub(m, monkeypatch, [torch.tensor([0.1, 0.9, 0.3, 2.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 5.0])])
    results = evaluate(m, {"rank": dev}, {"rank": ["accuracy", "mrr"]})["rank"]
    # Query 2's positive (0.5) ranks 2nd of (2.0, -1.0, 0.5): reciprocal ranks 1, 1/2, 1.
    assert results == pytest.approx({"accuracy": 2 / 3, "mrr": (1 + 0.5 + 1) / 3})


def test_ranking_batch_must_hold_whole_groups(monkeypatch) -> None:
    m = add_pal(tiny_model("bert"), {"rank": {"type": "ranking", "num_candidates": 3}}, adapter="pal")
    stub(m, monkeypatch, [torch.zeros(4)])
    with pytest.raises(ValueError, match="4 rows, not a multiple of num_candidates=3"):
        predict_task(m, "rank", [ids(4) | {"labels": torch.tensor([1, 0, 0, 1])}])


def test_combined_score_sums_task_means() -> None:
    results = {"mrpc": {"f1": 0.8, "accuracy": 0.6}, "cola": {"mcc": 0.3}}
    assert combined_score(results) == pytest.approx(0.7 + 0.3)
    assert combined_score(results, "mrpc.f1") == pytest.approx(0.8)
    assert combined_score(results, "cola.mcc") == pytest.approx(0.3)


def test_combined_score_counts_nan_as_zero() -> None:
    results = {"stsb": {"pearson": math.nan, "spearman": 0.4}, "rte": {"accuracy": 0.5}}
    assert combined_score(results) == pytest.approx(0.2 + 0.5)
    assert combined_score(results, "stsb.pearson") == 0.0


def test_combined_score_names_a_bad_selection_and_the_valid_ones() -> None:
    results = {"mrpc": {"f1": 0.8, "accuracy": 0.6}}
    with pytest.raises(ValueError, match=r"select_by='mrpc\.mcc'.*'sum'.*'mrpc\.f1', 'mrpc\.accuracy'"):
        combined_score(results, "mrpc.mcc")
    with pytest.raises(ValueError, match="no evaluation results"):
        combined_score({})


def test_errors_name_the_problem(model) -> None:
    with pytest.raises(ValueError, match=r"no metrics given for dev tasks \['reg'\]"):
        evaluate(model, {"cls": batches("cls"), "reg": batches("reg")}, {"cls": ["accuracy"]})
    with pytest.raises(ValueError, match="'cls': no dev batches"):
        predict_task(model, "cls", [])
    with pytest.raises(ValueError, match="has no 'labels'"):
        predict_task(model, "cls", [tiny_batch()])
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        predict_task(model, "nope", batches("cls"))
