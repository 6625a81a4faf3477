"""One configuration of the GLUE accuracy benchmark: the training runs behind one row of its table.

Configurations (a)-(d), the ablations and the PAL side of (e) train with the package's own
``MultiTaskTrainer`` (the code behind ``pal-adapters train``). The LoRA side of (e) trains with
PEFT's own ``get_peft_model`` + ``LoraConfig`` on ``AutoModelForSequenceClassification`` (whose
classifier reads the pooler), on the same tokenized data, batch, steps, optimizer and schedule.

Every run evaluates its dev sets ``evals`` times (the last at its final step). ``final`` is the
last evaluation; ``best`` is the evaluation with the best score (the PALs rule: the sum of each
task's mean metric), which is optimistic because it is chosen on the very dev set it reports.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from pal_adapters.params import is_adapter_parameter
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.data import make_dataloader
from pal_adapters.training.evaluate import combined_score
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.report import read_jsonl
from pal_adapters.training.setup import TaskData, dev_loaders, prepare_data
from pal_adapters.training.taskdefs import TaskDef

Metrics = dict[str, dict[str, float]]
# (backbone, tokenizer) and (sequence-classification model) factories: the real MiniLM or a tiny one.
BackboneFactory = Callable[[], tuple[nn.Module, Any]]
SeqClsFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Budget:
    """What every configuration gets: optimizer steps per task, batch, learning rates, seed."""

    steps: dict[str, int]
    batch_size: int = 32
    lr: float = 5e-5  # the backbone's, where it is tuned
    adapter_lr: float = 1e-3  # adapters, heads (and LoRA)
    max_train_examples: int = 20_000  # caps SST-2 only
    max_eval_examples: int = 0  # 0: whole dev sets
    evals: int = 2
    seed: int = 42
    cache_dir: str = str(Path(tempfile.gettempdir()) / "glue_accuracy_tokens")  # tokenized splits, reused


def _train_config(budget: Budget, steps: int, out: Path, overrides: dict[str, Any]) -> TrainConfig:
    fields = dict(output_dir=str(out), epochs=3, max_steps=steps, batch_size=budget.batch_size, lr=budget.lr,
                  adapter_lr=budget.adapter_lr, eval_every=max(1, math.ceil(steps / budget.evals)),
                  log_every=max(1, steps // 10), max_train_examples=budget.max_train_examples,
                  max_eval_examples=budget.max_eval_examples, seed=budget.seed)
    fields.update(overrides)
    return TrainConfig(**fields)


def drop_adapters(trainer: MultiTaskTrainer) -> None:
    """Heads only / a plain fine-tune: the adapters leave the forward (hooks detached) and never train."""
    trainer.model.bank.detach()
    for name, p in trainer.model.named_parameters():
        if is_adapter_parameter(name):
            p.requires_grad_(False)
    trainer.trainable = [p for p in trainer.trainable if p.requires_grad]


def train_with_package(defs: dict[str, TaskDef], steps: int, budget: Budget, backbone: BackboneFactory,
                       out: Path, overrides: dict[str, Any], adapters: bool = True,
                       keep: Callable[[MultiTaskTrainer], None] | None = None,
                       start: Callable[[MultiTaskTrainer], None] | None = None) -> dict[str, Any]:
    """One ``MultiTaskTrainer`` run over ``defs`` for ``steps`` optimizer steps. ``start`` sees the
    trainer before step 0 (a teacher copies in the weights it is fine-tuned from); ``keep`` sees the
    trained trainer before its folder is removed (the teachers write their outputs there)."""
    net, tokenizer = backbone()
    config = _train_config(budget, steps, out, overrides)
    trainer = MultiTaskTrainer(config, defs, backbone=net, tokenizer=tokenizer, cache_dir=budget.cache_dir)
    if not adapters:
        drop_adapters(trainer)
    if start is not None:
        start(trainer)
    report = trainer.model.parameter_report()
    began = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - began
    if keep is not None:
        keep(trainer)
    records = read_jsonl(out / "log.jsonl")
    evals = [e for e in records if e.get("kind") == "eval"]
    train_log = [{k: e.get(k) for k in ("step", "task", "loss", "weight")} for e in records if e.get("kind") == "train"]
    shutil.rmtree(out, ignore_errors=True)  # checkpoints and saved models are not results
    best = max(evals, key=lambda e: e["score"])
    trainable = report.trainable - (0 if adapters else sum(report.adapters.values()))
    return {"final": evals[-1]["metrics"], "best": best["metrics"], "best_step": best["step"], "steps": steps,
            "wall_s": wall, "backbone_params": report.backbone, "trainable_params": trainable,
            "added_params": sum(report.heads.values()) + (sum(report.adapters.values()) if adapters else 0),
            "curve": [{"step": e["step"], "metrics": e["metrics"]} for e in evals], "train_log": train_log}


# ---- PEFT LoRA ------------------------------------------------------------------------------------
def lora_params_per_rank(seq_cls: SeqClsFactory, num_labels: int) -> tuple[int, int]:
    """(LoRA parameters per unit of rank on every linear layer, classifier parameters)."""
    from peft import LoraConfig, TaskType, get_peft_model

    counts = []
    for r in (1, 2):
        model = get_peft_model(seq_cls(num_labels), LoraConfig(task_type=TaskType.SEQ_CLS, r=r,
                                                               target_modules="all-linear"))
        counts.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
    per_rank = counts[1] - counts[0]
    return per_rank, counts[0] - per_rank


def _lora_model(seq_cls: SeqClsFactory, num_labels: int, rank: int) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    # "all-linear": every nn.Linear but the classifier, i.e. Q, K, V, attention output, both FFN
    # layers and the pooler; the classifier is trained in full (modules_to_save).
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, target_modules="all-linear",
                        modules_to_save=["classifier"])
    return get_peft_model(seq_cls(num_labels), config)


def _lora_optimizer(model: nn.Module, budget: Budget, steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=budget.adapter_lr, weight_decay=0.01)
    warmup = math.ceil(0.1 * steps)  # TrainConfig's default warm-up ratio
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, steps)


def _lora_evaluate(model: nn.Module, data: TaskData, loader) -> dict[str, float]:
    """The task's dev metrics, scored by its task kind exactly as the package scores its own heads."""
    kind = data.definition.kind
    outputs = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits = model(**_inputs(batch)).logits
            outputs.append(kind.batch_outputs(kind.shape_logits(logits), batch))
    model.train()
    return kind.score(data.definition.metrics, *kind.finish(outputs))


def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def train_lora(name: str, definition: TaskDef, steps: int, budget: Budget, rank: int, backbone: BackboneFactory,
               seq_cls: SeqClsFactory) -> dict[str, Any]:
    """PEFT LoRA on one task: AdamW at ``adapter_lr``, 10% warm-up, linear decay, clipping at 1."""
    tokenizer = backbone()[1]
    config = _train_config(budget, steps, Path("unused"), {})
    data = prepare_data({name: definition}, tokenizer, config, budget.cache_dir)[name]
    dev = dev_loaders({name: data}, tokenizer, budget.batch_size)[name]
    torch.manual_seed(budget.seed)
    model = _lora_model(seq_cls, definition.task.num_labels, rank)
    model.train()
    optimizer, schedule = _lora_optimizer(model, budget, steps)
    train = make_dataloader(data.train, tokenizer, budget.batch_size, shuffle=True, seed=budget.seed,
                            kind=definition.kind)
    batches, evals = _forever(train), []
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=f"LoRA {name}", dynamic_ncols=True):
        batch = next(batches)
        labels = batch["labels"].float() if definition.task.type == "regression" else batch["labels"]
        model(**_inputs(batch), labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % config.eval_every == 0 or step == steps:
            metrics = {name: _lora_evaluate(model, data, dev)}
            evals.append({"step": step, "metrics": metrics, "score": combined_score(metrics)})
    wall = time.perf_counter() - start
    best = max(evals, key=lambda e: e["score"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"final": evals[-1]["metrics"], "best": best["metrics"], "best_step": best["step"], "steps": steps,
            "wall_s": wall, "trainable_params": trainable, "added_params": trainable, "rank": rank,
            "curve": [{"step": e["step"], "metrics": e["metrics"]} for e in evals]}


def _forever(loader):
    epoch = 0
    while True:
        if hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
