from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import randomize_adapters, tiny_batch, tiny_model

from pal_adapters import MultiTaskModel, add_pal
from pal_adapters.config import TaskConfig
from pal_adapters.io import AdapterLoadError
from pal_adapters.tasks import kind_of
from pal_adapters.training.distill import (
    DistillConfig,
    TeacherEnsemble,
    distill_task_loss,
    load_probabilities,
    save_probabilities,
    teacher_output,
    write_teacher_probabilities,
)

STUDENT_TASKS = {"a": 3, "r": "regression", "b": 2}
N_TRAIN = 10


def make_teacher(seed: int) -> MultiTaskModel:
    """A tiny teacher whose adapters and heads are far from their initial values."""
    teacher = add_pal(tiny_model("bert"), {"a": 3, "r": "regression"}, adapter="pal")
    randomize_adapters(teacher, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if name.startswith("heads."):
                p.copy_(torch.randn(p.shape, generator=g))
    return teacher.eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[tuple[MultiTaskModel, str]]:
    out = []
    for seed in (3, 4):
        teacher = make_teacher(seed)
        out.append((teacher, str(teacher.save_pretrained(tmp_path_factory.mktemp(f"teacher{seed}")))))
    return out


def ensemble(config: DistillConfig, num_examples: dict[str, int] | None = None) -> TeacherEnsemble:
    return TeacherEnsemble(config, backbone_factory=lambda: tiny_model("bert"), tasks=STUDENT_TASKS,
                           num_examples=num_examples)


def probs_file(path: Path, rows: int = N_TRAIN, classes: int = 3, seed: int = 5) -> tuple[str, torch.Tensor]:
    probs = torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)).softmax(-1)
    return str(save_probabilities(path, probs)), probs


def softmax_of(teacher: MultiTaskModel, batch: dict[str, torch.Tensor], task: str = "a") -> torch.Tensor:
    with torch.no_grad():
        return teacher(**batch, task=task).logits.softmax(-1)


def test_targets_are_mean_of_model_teachers_softmax(teachers) -> None:
    (t1, p1), (t2, p2) = teachers
    ens = ensemble(DistillConfig(teachers={"a": (p1, p2)}))
    batch = {**tiny_batch(), "labels": torch.tensor([0, 1, 2])}
    q = ens.targets("a", batch, example_index=torch.arange(3))
    expected = (softmax_of(t1, tiny_batch()) + softmax_of(t2, tiny_batch())) / 2
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    assert not torch.allclose(softmax_of(t1, tiny_batch()), softmax_of(t2, tiny_batch()), atol=1e-3)
    ens.train()
    assert not any(m.training for m in ens.modules())
    assert not any(p.requires_grad for p in ens.parameters())


def test_model_teacher_and_probability_file_are_averaged(teachers, tmp_path) -> None:
    (t1, p1), _ = teachers
    path, probs = probs_file(tmp_path / "a.safetensors")
    ens = ensemble(DistillConfig(teachers={"a": (p1,)}, probabilities={"a": (path,)}), {"a": N_TRAIN})
    index = torch.tensor([4, 0, 7])
    q = ens.targets("a", tiny_batch(), example_index=index)
    torch.testing.assert_close(q, (softmax_of(t1, tiny_batch()) + probs[index]) / 2)


def test_regression_targets_average_teacher_predictions(teachers, tmp_path) -> None:
    (t1, p1), (t2, p2) = teachers
    preds = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5])
    path = str(save_probabilities(tmp_path / "r.safetensors", preds))
    ens = ensemble(DistillConfig(teachers={"r": (p1, p2)}, probabilities={"r": path}), {"r": 5})
    index = torch.tensor([2, 4, 1])
    q = ens.targets("r", tiny_batch(), example_index=index)
    with torch.no_grad():
        expected = (t1(**tiny_batch(), task="r").logits + t2(**tiny_batch(), task="r").logits + preds[index]) / 3
    assert q.shape == (3,)
    torch.testing.assert_close(q, expected)


def test_file_rows_follow_example_index_and_teacherless_tasks_get_none(tmp_path) -> None:
    path, probs = probs_file(tmp_path / "a.safetensors")
    ens = ensemble(DistillConfig(probabilities={"a": (path,)}))
    assert len(ens.models) == 0
    torch.testing.assert_close(ens.targets("a", {}, example_index=torch.tensor([9, 3])), probs[[9, 3]])
    assert ens.targets("b", tiny_batch(), example_index=torch.arange(3)) is None
    with pytest.raises(ValueError, match="pass example_index"):
        ens.targets("a", tiny_batch())
    with pytest.raises(IndexError, match=r"rows 0\.\.9"):
        ens.targets("a", {}, example_index=torch.tensor([10]))


def test_teacher_folder_is_loaded_once_for_several_tasks(teachers) -> None:
    (_, p1), _ = teachers
    ens = ensemble(DistillConfig(teachers={"a": (p1,), "r": (p1,)}))
    assert len(ens.models) == 1
    assert ens.targets("r", tiny_batch()).shape == (3,)


def test_write_teacher_probabilities_round_trips_to_targets(teachers, tmp_path) -> None:
    (t1, p1), _ = teachers
    batches = [tiny_batch(batch=3, seed=1), tiny_batch(batch=2, seed=2)]
    path = write_teacher_probabilities(t1, "a", batches, tmp_path / "t1_a.safetensors")
    assert [f.name for f in tmp_path.iterdir()] == ["t1_a.safetensors"]  # no temporary file left
    torch.testing.assert_close(load_probabilities(path, 5, 3), torch.cat([softmax_of(t1, b) for b in batches]))
    from_file = ensemble(DistillConfig(probabilities={"a": str(path)}), {"a": 5})
    from_model = ensemble(DistillConfig(teachers={"a": p1}))
    second = batches[1]
    torch.testing.assert_close(from_file.targets("a", second, torch.tensor([3, 4])), from_model.targets("a", second))


def test_config_rejects_missing_paths_and_bad_alpha(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"teachers\['a'\].*nowhere"):
        DistillConfig(teachers={"a": (str(tmp_path / "nowhere"),)})
    with pytest.raises(FileNotFoundError, match=r"probabilities\['b'\].*missing\.safetensors"):
        DistillConfig(probabilities={"b": (str(tmp_path / "missing.safetensors"),)})
    with pytest.raises(ValueError, match="alpha=1.5"):
        DistillConfig(alpha=1.5)


@pytest.mark.parametrize(
    ("probs", "rows", "message"),
    [
        (torch.full((N_TRAIN, 2), 0.5), N_TRAIN, r"shape \(10, 2\).*\(N, 3\)"),
        (torch.full((7, 3), 1 / 3), N_TRAIN, "has 7 rows but the task's training set has 10"),
        (torch.randn(N_TRAIN, 3), N_TRAIN, "were logits saved"),
    ],
)
def test_bad_probability_files_are_named(tmp_path, probs, rows, message) -> None:
    path = str(save_probabilities(tmp_path / "bad.safetensors", probs))
    with pytest.raises(AdapterLoadError, match=rf"bad\.safetensors.*{message}"):
        ensemble(DistillConfig(probabilities={"a": path}), {"a": rows})


def test_unreadable_probability_file_is_named(tmp_path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(AdapterLoadError, match="junk.safetensors is not a readable safetensors file"):
        load_probabilities(path, None, 3)


def test_teacher_errors_name_the_teacher(teachers) -> None:
    (_, p1), (_, p2) = teachers
    with pytest.raises(ValueError, match=rf"teacher {p1} has no task 'b'; its tasks: \['a', 'r'\]"):
        ensemble(DistillConfig(teachers={"b": (p1,)}))
    with pytest.raises(ValueError, match="which the student lacks"):
        ensemble(DistillConfig(teachers={"zzz": (p1,)}))
    with pytest.raises(ValueError, match=rf"teacher {p1}: task 'a' is classification with 3 labels.* with 4"):
        TeacherEnsemble(DistillConfig(teachers={"a": p1}), lambda: tiny_model("bert"), tasks={"a": 4})
    shared = tiny_model("bert")
    with pytest.raises(ValueError, match="returned the same backbone twice"):
        TeacherEnsemble(DistillConfig(teachers={"a": (p1, p2)}), lambda: shared, tasks=STUDENT_TASKS)


def test_distill_task_loss_mixes_the_kinds_kd_loss_with_the_heads_gold_loss() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    q = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    labels = torch.tensor([1, 0])
    log_p = [[z - math.log(sum(math.exp(v) for v in row)) for z in row] for row in logits.tolist()]
    kd = sum(-sum(qc * lp for qc, lp in zip(qr, lr, strict=True)) for qr, lr in zip(q.tolist(), log_p, strict=True)) / 2
    ce = -(log_p[0][1] + log_p[1][0]) / 2
    classes, regression = kind_of(TaskConfig(num_labels=3)), kind_of(TaskConfig(type="regression"))
    assert distill_task_loss(classes, logits, q, None).item() == pytest.approx(kd, rel=1e-6)
    gold = classes.loss(logits, labels)  # what the head computed in the forward
    mixed = distill_task_loss(classes, logits, q, gold, alpha=0.3).item()
    assert mixed == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-6)
    reg = distill_task_loss(regression, torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0]), None)
    assert reg.item() == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="needs labels"):
        distill_task_loss(classes, logits, q, None, alpha=0.5)
    ranking = kind_of(TaskConfig(type="ranking", num_candidates=2))
    with pytest.raises(ValueError, match="'ranking' cannot be distilled"):
        distill_task_loss(ranking, torch.zeros(2), torch.zeros(2), None)


def test_teacher_probabilities_follow_example_index_in_any_batch_order(tmp_path):
    teacher = add_pal(tiny_model("bert"), {"a": 3}).eval()
    randomize_adapters(teacher)
    batch = tiny_batch(batch=6, pad_rows=())
    expected = teacher_output(teacher, "a", batch)  # rows in example order 0..5
    order = [4, 1, 5, 0, 3, 2]
    shuffled = [{**{k: v[order[i:i + 3]] for k, v in batch.items()}, "example_index": torch.tensor(order[i:i + 3])}
                for i in (0, 3)]
    path = write_teacher_probabilities(teacher, "a", shuffled, tmp_path / "p.safetensors")
    torch.testing.assert_close(load_probabilities(path, 6, 3), expected, rtol=1e-5, atol=1e-6)
