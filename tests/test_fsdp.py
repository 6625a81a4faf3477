"""FSDP2 sharding (``training.sharding: fsdp``) on two CPU processes (gloo) trains like one process,
never waits on a task one process lacks, and saves what an unsharded model saves."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import pytest
import torch
from helpers import toy_tokenizer
from test_distributed import train_cases_on_two_and_one

from pal_adapters.training.batcher import Batcher
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import DynamicPaddingCollator
from pal_adapters.training.sampling import SamplingConfig, TaskSampler
from pal_adapters.training.streams import TaskStream

SCRIPT = Path(__file__).parent / "scripts" / "train_cases.py"
sys.path.insert(0, str(SCRIPT.parent))
from train_cases import CASES  # noqa: E402


def test_sharding_field_names_its_choices():
    assert TrainConfig().sharding == "none"
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(sharding="zero3")


def _batcher(rank: int, every_task: bool) -> Batcher:
    rows = {"input_ids": [[2, 5, 3]] * 8, "attention_mask": [[1, 1, 1]] * 8, "labels": [0, 1] * 4}
    streams = {t: TaskStream(t, datasets.Dataset.from_dict(rows), 4, seed=0) for t in ("a", "b")}
    sampler = TaskSampler({"a": 2, "b": 2}, SamplingConfig("proportional", 0, 10, 4))
    return Batcher(streams, sampler, batch_size=3, mixed=True, collator=DynamicPaddingCollator(toy_tokenizer()),
                   pad_id=0, rank=rank, world=2, every_task=every_task)


def test_every_task_gives_a_process_without_rows_a_stand_in_of_weight_zero():
    """Over the draws, some task has one row, so one process has none of it: with ``every_task`` it
    gets that row with share 0 (its modules run, its loss term is zero); the other rows are unchanged."""
    stood_in = 0
    for rank in (0, 1):
        plain, every = _batcher(rank, False), _batcher(rank, True)
        for _ in range(10):
            a, b = next(plain), next(every)
            assert [s.task for s in b.segments] == sorted({s.task for s in b.segments})  # every drawn task
            real = [s for s in b.segments if s.share > 0]
            assert [(s.task, s.share, s.labels.tolist()) for s in real] == \
                   [(s.task, s.share, s.labels.tolist()) for s in a.segments]
            stood_in += len(b.segments) - len(real)
            assert all(s.stop - s.start == 1 for s in b.segments if s.share == 0)
    assert stood_in > 0


def test_two_sharded_processes_train_and_save_like_one(tmp_path):
    """20 steps of: one-task batches; mixed with grad_accum 2 and uncertainty weighting (loss weights
    outside FSDP, averaged by the flat all-reduce); mixed batches of 4 rows over 3 tasks
    with a frozen backbone (processes miss tasks); mixed, stopped at step 10 and resumed. Under a
    hard timeout: a collective that waits for a process that never comes fails the test."""
    train_cases_on_two_and_one(tmp_path, "fsdp", "sharded=True ddp=False")
    for case in CASES:
        for saved in ("saved", "task"):  # the sharded model's save == the same weights' unsharded save
            a, b = tmp_path / "two" / f"{case}-{saved}", tmp_path / "two" / f"{case}-{saved}-resaved"
            files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
            assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
            assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files), (case, saved)
    two, one = (torch.load(tmp_path / d / "mixed_resume" / "checkpoint" / "optimizer.pt", weights_only=True)
                for d in ("two", "one"))
    assert two["param_groups"] == one["param_groups"] and two["state"].keys() == one["state"].keys()
    for i, s in one["state"].items():  # a one-process optimizer state, gathered
        for k, v in s.items():
            torch.testing.assert_close(two["state"][i][k], v, rtol=1e-3, atol=1e-6)
