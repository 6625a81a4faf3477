"""transformers.Trainer trains a pal_adapters model without a custom loop."""

from __future__ import annotations

import torch
from helpers import tiny_model
from transformers import Trainer, TrainingArguments

from pal_adapters import TaskConfig, add_pal


def toy_examples(n: int, seed: int, with_task_ids: bool = False):
    """Label = whether token 5 occurs in the sequence: learnable from the tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(6, 128, (10,), generator=g)
        label = i % 2
        if label:
            ids[int(torch.randint(1, 10, (1,), generator=g))] = 5
        ex = {"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": label}
        if with_task_ids:
            ex["task_ids"] = i % 2
        out.append(ex)
    return out


def train_losses(model, data, tmp_path, steps=30):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, learning_rate=3e-3,
                             per_device_train_batch_size=16, logging_steps=5, report_to=[], save_strategy="no",
                             use_cpu=True, seed=0, disable_tqdm=True, warmup_steps=0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_trains_a_one_task_model(tmp_path):
    model = add_pal(tiny_model("bert"), {"toy": TaskConfig(num_labels=2)}, adapter="pal", freeze_backbone=False)
    model.set_task("toy")
    losses = train_losses(model, toy_examples(64, 0), tmp_path)
    assert len(losses) >= 4 and losses[-1] < losses[0] * 0.8


def test_trainer_trains_a_mixed_task_model(tmp_path):
    model = add_pal(tiny_model("bert"), {"a": 2, "b": 2}, adapter="low_rank")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train_losses(model, toy_examples(64, 1, with_task_ids=True), tmp_path)
    assert losses[-1] < losses[0]
    moved = {n.split(".")[2] if "pal_adapters" in n else n.split(".")[1]
             for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert {"a", "b"} <= moved  # both tasks' adapters and heads were trained
