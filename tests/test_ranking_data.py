"""Ranking from data (MT-DNN's QNLI as ranking): grouping a query's candidates, whole-group
batches, precision@1 and MRR, and a run that trains and evaluates a ranking task."""

from __future__ import annotations

import json
import random

import pytest
from helpers import WORDS, toy_backbone, toy_tokenizer

from pal_adapters.tasks.ranking import mean_reciprocal_rank, precision_at_1
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import LengthGroupedBatchSampler, make_dataloader, tokenize
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.readers import load_split
from pal_adapters.training.streams import TaskStream, shard
from pal_adapters.training.taskdefs import load_task_defs

GROUP = 3


def write_queries(path, n_queries: int, seed: int = 0, shuffle: bool = True) -> list[dict]:
    """JSONL rows (query, passage, label); the relevant passage repeats the query's first word."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_queries):
        query = f"{WORDS[q % len(WORDS)]} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        for c in range(GROUP):
            first = query.split()[0] if c == 0 else rng.choice([w for w in WORDS if w != query.split()[0]])
            rows.append({"qid": q, "query": query, "passage": f"{first} {rng.choice(WORDS)}", "label": int(c == 0)})
    if shuffle:
        rng.shuffle(rows)  # a query's candidates are scattered through the file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def task_defs(folder, **extra) -> dict:
    data = {"kind": "jsonl", "path": str(folder), "text_columns": ["query", "passage"], "label_column": "label"}
    return load_task_defs({"max_length": 16, "tasks": {
        "rank": {"type": "ranking", "num_candidates": GROUP, "data": data, **extra}}})


def test_reader_groups_each_querys_candidates_together(tmp_path) -> None:
    rows = write_queries(tmp_path / "train.jsonl", n_queries=5)
    ds = load_split(task_defs(tmp_path)["rank"], "train")
    assert len(ds) == len(rows)
    queries = ds["text_a"]
    for start in range(0, len(ds), GROUP):
        assert len(set(queries[start:start + GROUP])) == 1
        assert sum(ds["label"][start:start + GROUP]) == 1
    firsts = list(dict.fromkeys(r["query"] for r in rows))  # queries in order of first appearance
    assert queries[::GROUP] == firsts


@pytest.mark.parametrize(("edit", "message"), [
    (lambda rows: rows[:-1], r"has 2 candidate rows with 1 positives; each query needs num_candidates=3"),
    (lambda rows: [r | {"label": 1} if r["qid"] == 1 else r for r in rows], "has 3 candidate rows with 3 positives"),
    (lambda rows: [r | {"label": 2} if i == 0 else r for i, r in enumerate(rows)], "label 2 is not a relevance"),
])
def test_bad_groups_name_the_query(tmp_path, edit, message) -> None:
    rows = edit(write_queries(tmp_path / "x.jsonl", n_queries=3, shuffle=False))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=message):
        load_split(task_defs(tmp_path)["rank"], "train")


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_hold_whole_groups(tmp_path, shuffle) -> None:
    write_queries(tmp_path / "train.jsonl", n_queries=11)
    task = task_defs(tmp_path)["rank"]
    ds = tokenize(load_split(task, "train"), toy_tokenizer(), 16, kind=task.kind)
    sampler = LengthGroupedBatchSampler(ds["length"], 8, shuffle=shuffle, group_size=GROUP, mega_batch_mult=2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    for batch in batches:  # 8 rows -> 2 groups of 3, each group's rows consecutive and aligned
        assert len(batch) in (GROUP, 2 * GROUP)
        assert all(batch[i] % GROUP == 0 and batch[i + 1:i + GROUP] == [batch[i] + 1, batch[i] + 2]
                   for i in range(0, len(batch), GROUP))
    stream = TaskStream("rank", ds, 8, seed=0, kind=task.kind)
    for _ in range(10):  # across epoch ends too
        rows = stream.take(4)  # rounded up to whole groups
        assert len(rows) == 2 * GROUP and all(rows[i] % GROUP == 0 for i in range(0, len(rows), GROUP))
    for batch in make_dataloader(ds, toy_tokenizer(), 7, kind=task.kind, shuffle=shuffle):
        assert batch["labels"].view(-1, GROUP).sum(-1).tolist() == [1] * (len(batch["labels"]) // GROUP)


def test_processes_get_whole_groups_of_a_global_batch() -> None:
    rows = list(range(30, 42))  # four groups of 3
    shares = [shard(rows, rank, 2, GROUP) for rank in range(2)]
    assert shares == [[30, 31, 32, 36, 37, 38], [33, 34, 35, 39, 40, 41]]
    with pytest.raises(ValueError, match="divisible by 6"):
        shard(rows[:9], 0, 2, GROUP)
    assert shard(rows[:9], 1, 2, GROUP, whole=False) == [33, 34, 35]  # a mixed batch's uneven share


def test_precision_at_1_and_mrr_match_hand_counts() -> None:
    scores = [[0.1, 0.9, 0.3], [2.0, -1.0, 0.5], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]]
    positive = [1, 2, 2, 0]  # ranks 1, 2, 1, 3
    assert precision_at_1(scores, positive) == pytest.approx(2 / 4)
    assert mean_reciprocal_rank(scores, positive) == pytest.approx((1 + 1 / 2 + 1 + 1 / 3) / 4)


@pytest.mark.parametrize("mixed", [False, True])
def test_a_ranking_task_trains_and_reports_accuracy_and_mrr(tmp_path, mixed) -> None:
    write_queries(tmp_path / "data" / "train.jsonl", n_queries=24, seed=1)
    write_queries(tmp_path / "data" / "dev.jsonl", n_queries=8, seed=2)
    defs = task_defs(tmp_path / "data")
    config = TrainConfig(max_steps=3, batch_size=6, lr=1e-3, eval_every=3, seed=0, mixed_batches=mixed,
                         output_dir=str(tmp_path / "run"), adapter={"kind": "pal", "hidden_size": 8, "num_heads": 2})
    result = MultiTaskTrainer(config, defs, backbone=toy_backbone(), tokenizer=toy_tokenizer()).fit()
    metrics = result.best_metrics["rank"]
    assert set(metrics) == {"accuracy", "mrr"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 1 / GROUP <= metrics["mrr"] <= 1.0
