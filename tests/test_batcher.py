"""The batcher (streams + sampler -> batches of task segments) and the one objective of a step."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch
from helpers import WORDS, randomize_adapters, toy_backbone, toy_tokenizer

from pal_adapters import TaskConfig, add_pal
from pal_adapters.tasks import kind_of
from pal_adapters.training.batch import Batch, TaskSegment
from pal_adapters.training.batcher import Batcher, Schedule
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import DynamicPaddingCollator, tokenize
from pal_adapters.training.distill import DistillConfig, TeacherEnsemble, distill_task_loss, save_probabilities
from pal_adapters.training.losses import UNCERTAINTY_PREFIX, LossWeighting
from pal_adapters.training.objective import Objective
from pal_adapters.training.sampling import SamplingConfig, TaskSampler
from pal_adapters.training.streams import TaskStream

TAGS = ["O", "B-ADJ", "I-ADJ"]
TASKS = {"cls": TaskConfig(num_labels=2, dropout=0.0),
         "reg": TaskConfig(type="regression", dropout=0.0),
         "ner": TaskConfig(type="token_classification", num_labels=3, labels=TAGS, dropout=0.0)}
BATCH = 8


def columns(task: str, n: int) -> dict[str, list]:
    sentences = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(2 + i % 7)) for i in range(n)]
    if task == "cls":
        return {"text_a": sentences, "label": [i % 2 for i in range(n)]}
    if task == "reg":
        return {"text_a": sentences, "label": [len(s.split()) / 3.0 for s in sentences]}
    tokens = [s.split() for s in sentences]
    return {"tokens": tokens, "tags": [[int(w in ("good", "bad", "fine")) for w in t] for t in tokens]}


@pytest.fixture(scope="module")
def data() -> dict[str, datasets.Dataset]:
    sizes = {"cls": 20, "reg": 12, "ner": 28}
    return {t: tokenize(datasets.Dataset.from_dict(columns(t, n)), toy_tokenizer(), 16, kind=kind_of(TASKS[t]))
            for t, n in sizes.items()}


def make_batcher(data, mixed: bool, rank: int = 0, world: int = 1, strategy: str = "proportional") -> Batcher:
    streams = {t: TaskStream(t, ds, BATCH, seed=4, kind=kind_of(TASKS[t])) for t, ds in data.items()}
    sizes = {t: math.ceil(len(ds) / BATCH) for t, ds in data.items()}
    sampler = TaskSampler(sizes, SamplingConfig(strategy, seed=1, num_epochs=4))
    return Batcher(streams, sampler, batch_size=BATCH, mixed=mixed, collator=DynamicPaddingCollator(toy_tokenizer()),
                   pad_id=0, rank=rank, world=world)


def test_a_one_task_batch_is_one_segment_with_the_whole_share(data):
    batcher = make_batcher(data, mixed=False)
    for _ in range(6):
        batch = next(batcher)
        (segment,) = batch.segments
        assert (segment.start, segment.stop, segment.share) == (0, BATCH, 1.0)
        inputs = batch.model_inputs()
        assert inputs["task"] == segment.task and "task_ids" not in inputs
        assert inputs["labels"] is segment.labels


def test_a_mixed_batch_has_contiguous_segments_in_task_order(data):
    batcher = make_batcher(data, mixed=True)
    for _ in range(6):
        batch = next(batcher)
        tasks = [s.task for s in batch.segments]
        assert tasks == [t for t in TASKS if t in tasks]  # the model's order: its stable sort is a no-op
        assert [s.start for s in batch.segments] == [0] + [s.stop for s in batch.segments[:-1]]
        assert batch.segments[-1].stop == batch.inputs["input_ids"].shape[0] == BATCH
        assert sum(s.share for s in batch.segments) == pytest.approx(1.0)
        for s in batch.segments:
            assert s.labels.shape[0] == s.example_index.shape[0] == s.stop - s.start
            if s.task == "ner":  # token labels re-padded to the joint length
                assert s.labels.shape[1] == batch.inputs["input_ids"].shape[1]
        assert batch.model_inputs()["task_ids"] == batch.task_ids or len(batch.segments) == 1


@pytest.mark.parametrize("mixed", [False, True])
def test_processes_split_every_global_batch_and_their_shares_average_to_one(data, mixed):
    one, ranks = make_batcher(data, mixed), [make_batcher(data, mixed, rank=r, world=2) for r in range(2)]
    for _ in range(8):
        whole, parts = next(one), [next(b) for b in ranks]
        for s in whole.segments:
            shares = [p for b in parts for p in b.segments if p.task == s.task]
            got = sorted(i for p in shares for i in p.example_index.tolist())
            assert got == sorted(s.example_index.tolist())
        assert sum(s.share for b in parts for s in b.segments) == pytest.approx(2.0)  # mean over 2 processes: 1


@pytest.mark.parametrize("mixed", [False, True])
def test_a_resumed_batcher_draws_the_same_batches(data, mixed):
    def signature(batch: Batch) -> list:
        return [(s.task, s.example_index.tolist(), s.share) for s in batch.segments]

    reference = make_batcher(data, mixed)
    expected = [signature(next(reference)) for _ in range(17)]
    first = make_batcher(data, mixed)
    head = [signature(next(first)) for _ in range(7)]
    assert first.micro_step == 7
    resumed = make_batcher(data, mixed)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # a checkpoint is JSON
    assert head + [signature(next(resumed)) for _ in range(10)] == expected


@pytest.fixture(scope="module")
def model():
    net = add_pal(toy_backbone(), TASKS, adapter="pal").eval()
    randomize_adapters(net)
    return net


def mixed_batch(data, min_segments: int = 3) -> Batch:
    batcher = make_batcher(data, mixed=True, strategy="round_robin")
    return next(b for b in iter(batcher) if len(b.segments) >= min_segments)


def kinds(model) -> dict:
    return {t: model.heads[t].kind for t in TASKS}


def test_under_sum_weighting_the_mixed_objective_is_the_models_mean_loss(data, model):
    batch = mixed_batch(data)
    with torch.no_grad():
        out = model(**batch.model_inputs())
        loss = Objective(LossWeighting(list(TASKS)), kinds(model))(out, batch)
    torch.testing.assert_close(loss.total, out.loss)
    assert list(loss.tasks) == list(out.task_losses)
    for task, value in loss.tasks.items():
        assert value is out.task_losses[task]  # the head's own loss, not a recomputation


def test_a_mixed_batch_is_weighted_like_its_tasks_one_task_batches(data, model):
    """Uncertainty weighting (s_t != 0): loss = Σ_t share_t·(exp(−s_t)·L_t + s_t), L_t from a
    one-task forward of the segment's rows."""
    weighting = LossWeighting(list(TASKS), "uncertainty")
    with torch.no_grad():
        for s, value in zip(getattr(weighting, UNCERTAINTY_PREFIX).values(), (0.3, -0.2, 0.5), strict=True):
            s.fill_(value)
    batch = mixed_batch(data)
    objective = Objective(weighting, kinds(model))
    with torch.no_grad():
        total = objective(model(**batch.model_inputs()), batch).total
        expected = 0.0
        for seg in batch.segments:
            alone = model(**batch.rows(seg), labels=seg.labels, task=seg.task)
            one = Batch(batch.rows(seg), (TaskSegment(seg.task, 0, seg.stop - seg.start, seg.labels,
                                                      seg.example_index, 1.0),))
            task_loss = objective(alone, one).total  # the same objective on a one-task batch
            s = getattr(weighting, UNCERTAINTY_PREFIX)[seg.task]
            torch.testing.assert_close(task_loss, torch.exp(-s) * alone.loss + s)
            expected = expected + seg.share * task_loss
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)


def test_distillation_is_the_same_in_a_mixed_and_a_one_task_batch(data, model, tmp_path):
    n = len(data["cls"])
    probs = torch.softmax(torch.randn(n, 2, generator=torch.Generator().manual_seed(3)), -1)
    path = save_probabilities(tmp_path / "cls.safetensors", probs)
    config = DistillConfig(probabilities={"cls": (str(path),)}, alpha=0.6)
    teachers = TeacherEnsemble(config, backbone_factory=toy_backbone, tasks=model.tasks, num_examples={"cls": n})
    objective = Objective(LossWeighting(list(TASKS)), kinds(model), teachers, config)
    batch = mixed_batch(data)
    (seg,) = [s for s in batch.segments if s.task == "cls"]
    with torch.no_grad():
        mixed = objective(model(**batch.model_inputs()), batch).tasks["cls"]
        alone = model(**batch.rows(seg), labels=seg.labels, task="cls")
        expected = distill_task_loss(model.heads["cls"].kind, alone.logits, probs[seg.example_index], alone.loss, 0.6)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)


def sizes_of(data) -> dict[str, int]:
    return {t: len(ds) for t, ds in data.items()}


def test_mtdnn_that_would_draw_a_batch_twice_is_refused_not_turned_proportional(data):
    config = TrainConfig(sampling="mtdnn", max_steps=40, epochs=2, batch_size=BATCH)
    streams = {t: TaskStream(t, ds, BATCH, seed=4, kind=kind_of(TASKS[t])) for t, ds in data.items()}
    schedule = Schedule.of(config, sizes_of(data))
    with pytest.raises(ValueError, match=r"sampling='mtdnn'.*steps_per_epoch=20 exceeds the 9 batches.*proportional"):
        Batcher.for_run(config, streams, schedule, DynamicPaddingCollator(toy_tokenizer()), 0)


def test_a_run_longer_than_its_epochs_is_refused_before_it_starts(data):
    config = TrainConfig(max_steps=25, steps_per_epoch=4, epochs=3, grad_accum=2, batch_size=BATCH)
    with pytest.raises(ValueError, match=r"max_steps=25 x grad_accum=2 .* exceed epochs=3 x steps_per_epoch=4"):
        Schedule.of(config, sizes_of(data))
    schedule = Schedule.of(config.replace(max_steps=6), sizes_of(data))
    assert (schedule.total_steps, schedule.epoch_steps) == (6, 2)
