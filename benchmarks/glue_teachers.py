"""MT-DNN-KD's teachers for the GLUE benchmark (Liu et al. 2019, arXiv 1904.09482).

A teacher is configuration (a): one model per task, backbone fine-tuned, no adapters, the same
steps as (a). RTE and MRPC, the small tasks, get an ensemble of three seeds (the paper used three
teachers per task); the others one. Each teacher's class probabilities (STS-B: its predictions)
on the *student's* training rows, in order, are written once with ``write_teacher_probabilities``;
the student reads them back by row (``distill: {probabilities: ...}``), and the soft target of a
task is the mean over its teachers.

The probability files are model outputs, not results: they live in ``--teacher-cache``
(``benchmarks/.cache/glue_teachers/``, ignored by git) and are reused while present. Each
teacher's own dev metrics are results: ``<results>/<profile>/teachers/<task>-seed<k>.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from common import write_json
from glue_runs import BackboneFactory, Budget, _train_config, train_with_package
from torch.utils.data import DataLoader

from pal_adapters.training.data import DynamicPaddingCollator
from pal_adapters.training.distill import write_teacher_probabilities
from pal_adapters.training.setup import prepare_data
from pal_adapters.training.taskdefs import TaskDef

ENSEMBLE = {"rte": 3, "mrpc": 3}  # teachers per task (seeds seed, seed+1, ...); 1 for the others
TEACHER = (("freeze_backbone", False),)  # configuration (a): tuned backbone, adapters dropped


def teacher_probabilities(defs: dict[str, TaskDef], budget: Budget, backbone: BackboneFactory, work: Path,
                          profile: str, results_dir: Path, cache_dir: Path,
                          ) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Train (or reuse) every task's teachers: task -> probability files, and task -> their dev runs."""
    files: dict[str, list[str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for task, definition in defs.items():
        for k in range(ENSEMBLE.get(task, 1)):
            name = f"{task}-seed{budget.seed + k}"
            probs = cache_dir / profile / f"{name}.safetensors"
            record = results_dir / profile / "teachers" / f"{name}.json"
            if not (probs.is_file() and record.is_file()):
                print(f"\n--- teacher {name}: {budget.steps[task]} steps", flush=True)
                seeded = dataclasses.replace(budget, seed=budget.seed + k)
                run = train_with_package({task: definition}, budget.steps[task], seeded, backbone, work / name,
                                         dict(TEACHER), adapters=False,
                                         keep=lambda trainer, t=task, p=probs: _write(trainer, t, budget, work, p))
                write_json(record, {"task": task, "seed": seeded.seed, **run})
            files.setdefault(task, []).append(str(probs))
            runs.setdefault(task, []).append(json.loads(record.read_text()))
    return files, runs


def _write(trainer, task: str, budget: Budget, work: Path, path: Path) -> None:
    """The trained teacher's outputs on the student's training rows of ``task`` (its seed's sample)."""
    student = _train_config(budget, 1, work / "student-rows", {})
    rows = prepare_data({task: trainer.data[task].definition}, trainer.tokenizer, student,
                        cache_dir=budget.cache_dir)[task].train
    batches = DataLoader(rows, batch_size=64, collate_fn=DynamicPaddingCollator(trainer.tokenizer))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_teacher_probabilities(trainer.model, task, batches, path)
