"""The multi-task training loop on a toy three-task problem (a tiny BERT, seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import toy_backbone, toy_tokenizer, write_toy_tasks

from pal_adapters.io import read_tensors
from pal_adapters.training.checkpoint import CheckpointError
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.distill import save_probabilities
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.streams import collate
from pal_adapters.training.taskdefs import load_task_defs

BASE = dict(max_steps=36, batch_size=16, lr=3e-3, log_every=1, eval_every=12, seed=3,
            adapter={"kind": "pal", "output_activation": "gelu", "hidden_size": 8, "num_heads": 2, "dropout": 0.0})


@pytest.fixture(scope="module")
def task_defs(tmp_path_factory):
    return load_task_defs(write_toy_tasks(tmp_path_factory.mktemp("toy")))


def trainer(task_defs, tmp_path, **kw) -> MultiTaskTrainer:
    config = TrainConfig(**{**BASE, "output_dir": str(tmp_path / "run"), **kw})
    return MultiTaskTrainer(config, task_defs, backbone=toy_backbone(), tokenizer=toy_tokenizer())


def train_set_losses(t: MultiTaskTrainer) -> dict[str, float]:
    """Each task's mean loss over its whole training set, computed outside the loop."""
    t.model.eval()
    out = {}
    with torch.no_grad():
        for name in t.train_tasks:
            stream = t.batcher.streams[name]
            batch = collate(stream, list(range(len(stream))), t.batcher.collator)
            batch.pop("example_index")
            out[name] = float(t.model(**batch, task=name).loss)
    return out


@pytest.mark.parametrize("mode", [dict(), dict(mixed_batches=True), dict(loss_weighting="uncertainty"),
                                  dict(sampling="round_robin", grad_accum=2, freeze_backbone=True, lr=1e-2)])
def test_training_lowers_every_tasks_loss(task_defs, tmp_path, mode):
    t = trainer(task_defs, tmp_path, **mode)
    before = train_set_losses(t)
    result = t.fit()
    after = train_set_losses(t)
    assert result.steps == BASE["max_steps"]
    for task in before:
        assert after[task] < before[task], (task, before[task], after[task])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {r["task"] for r in records if r["kind"] == "train"} == set(before)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [12, 24, 36]
    for folder in ("best", "last", "checkpoint"):
        assert (tmp_path / "run" / folder).is_dir()
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_uncertainty_log_variances_learn_and_skip_weight_decay(task_defs, tmp_path):
    t = trainer(task_defs, tmp_path, loss_weighting="uncertainty", max_steps=12, weight_decay=0.5)
    log_vars = list(t.weighting.parameters())
    groups = [g for g in t.optimizer.param_groups if any(p is log_vars[0] for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    t.fit()
    assert all(float(p.detach().abs()) > 0 for p in log_vars)


@pytest.mark.parametrize("head_lr", [None, 7e-4])
def test_each_part_trains_at_its_own_learning_rate(task_defs, tmp_path, head_lr):
    t = trainer(task_defs, tmp_path, lr=1e-5, adapter_lr=2e-3, head_lr=head_lr, loss_weighting="uncertainty",
                weight_decay=0.01)
    # Peak rates: the warm-up schedule starts every group at 0 and keeps the peak as initial_lr.
    rate = {id(p): g["initial_lr"] for g in t.optimizer.param_groups for p in g["params"]}
    named = [(n, p) for n, p in t.model.named_parameters() if p.requires_grad]
    heads = [p for n, p in named if n.startswith("heads.")]
    adapters = [p for n, p in named if ".pal" in n or "adapters" in n]
    backbone = [p for n, p in named if n.startswith("backbone.") and not (".pal" in n or "adapters" in n)]
    assert heads and adapters and backbone
    assert {rate[id(p)] for p in backbone} == {1e-5}
    assert {rate[id(p)] for p in adapters} == {2e-3}
    assert {rate[id(p)] for p in t.weighting.parameters()} == {2e-3}
    assert {rate[id(p)] for p in heads} == {2e-3 if head_lr is None else head_lr}
    # Groups in part order, no-decay first; unset, the heads share the adapters' groups: the layout
    # of checkpoints written before head_lr, which resume only if it is unchanged.
    expected = [1e-5, 1e-5, 2e-3, 2e-3] + ([] if head_lr is None else [head_lr, head_lr])
    assert [g["initial_lr"] for g in t.optimizer.param_groups] == expected
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.0, 0.01] * (len(expected) // 2)


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((run_dir / "last").rglob("*.safetensors")):
        meta = json.loads((path.parent / "task.json").read_text()) if (path.parent / "task.json").exists() else None
        for k, v in read_tensors(path, None).items():
            tensors[f"{path.parent.name}/{k}"] = v
        assert meta is None or meta["format"] == "pal_adapters"
    return tensors


@pytest.mark.parametrize("mode", [dict(), dict(mixed_batches=True, grad_accum=2)])
def test_killed_and_resumed_run_ends_with_the_same_weights(task_defs, tmp_path, mode, monkeypatch):
    kw = dict(max_steps=20, eval_every=100, checkpoint_every=8, **mode)
    # Dropout on, so the restored RNG matters too.
    kw["adapter"] = {**BASE["adapter"], "dropout": 0.2}
    trainer(task_defs, tmp_path / "a", **kw).fit()
    reference = final_weights(tmp_path / "a" / "run")

    interrupted = trainer(task_defs, tmp_path / "b", **kw)
    real_step = MultiTaskTrainer._optimizer_step

    def dying(self, step):
        if step == 11:  # after the checkpoint at step 8: steps 9-11 are lost and redone
            raise KeyboardInterrupt("killed")
        return real_step(self, step)

    monkeypatch.setattr(MultiTaskTrainer, "_optimizer_step", dying)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    monkeypatch.setattr(MultiTaskTrainer, "_optimizer_step", real_step)
    resumed = trainer(task_defs, tmp_path / "b", **kw)
    result = resumed.fit(resume=True)
    assert result.steps == 20
    weights = final_weights(tmp_path / "b" / "run")
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(weights[name], value), name


def test_distillation_from_one_hot_teacher_probabilities_equals_gold_training(task_defs, tmp_path):
    """KD with alpha=1 against one-hot 'teacher' probabilities is exactly cross-entropy on gold labels."""
    probe = trainer(task_defs, tmp_path / "probe", max_steps=1)
    files = {}
    for name in ("sentiment", "animal"):
        labels = torch.tensor(probe.data[name].train["labels"])
        path = tmp_path / f"{name}.safetensors"
        save_probabilities(path, torch.nn.functional.one_hot(labels, 2).float())
        files[name] = (str(path),)
    kw = dict(max_steps=10, eval_every=100)
    gold = trainer(task_defs, tmp_path / "gold", **kw)
    gold.fit()
    kd = trainer(task_defs, tmp_path / "kd", distill={"probabilities": files, "alpha": 1.0}, **kw)
    kd.fit()
    a, b = final_weights(tmp_path / "gold" / "run"), final_weights(tmp_path / "kd" / "run")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
    # ...and the soft targets really drive training: uniform "teachers" give other weights.
    for name, (path,) in files.items():
        n = len(probe.data[name].train)
        save_probabilities(path, torch.full((n, 2), 0.5))
    trainer(task_defs, tmp_path / "uniform", distill={"probabilities": files, "alpha": 1.0}, **kw).fit()
    c = final_weights(tmp_path / "uniform" / "run")
    assert not torch.equal(c["sentiment/head.out.weight"], a["sentiment/head.out.weight"])


@pytest.mark.parametrize("enabled", [True, False])
def test_regression_head_starts_at_the_mean_training_label(task_defs, tmp_path, enabled):
    t = trainer(task_defs, tmp_path, init_heads_from_labels=enabled)
    train_file = Path(task_defs["length"].data.path) / "train.jsonl"  # read apart from the package's readers
    labels = [json.loads(line)["label"] for line in train_file.read_text().splitlines()]
    expected = sum(labels) / len(labels) if enabled else 0.0
    assert expected != 0.0 or not enabled
    assert t.model.heads["length"].out.bias.item() == pytest.approx(expected, rel=1e-6)
    for name in ("sentiment", "animal"):  # classification heads keep their zero bias
        assert torch.count_nonzero(t.model.heads[name].out.bias) == 0


def test_the_trainer_sets_its_thread_count_from_the_run(task_defs, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        trainer(task_defs, tmp_path, num_threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resuming_with_another_grad_accum_is_refused_with_the_reason(task_defs, tmp_path):
    kw = dict(max_steps=4, checkpoint_every=2, eval_every=100, steps_per_epoch=16)
    trainer(task_defs, tmp_path, **kw).fit()
    with pytest.raises(CheckpointError, match=r"step 4 has drawn 4 micro-batches.*grad_accum=2"):
        trainer(task_defs, tmp_path, grad_accum=2, **kw).fit(resume=True)
