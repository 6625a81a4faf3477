"""MT-DNN-KD's teachers for the GLUE benchmark (Liu et al. 2019, arXiv 1904.09482).

Two recipes (``RECIPES``); RTE and MRPC, the small tasks, get an ensemble of three seeds (the
paper used three teachers per task), the others one.

- ``single``: a teacher is configuration (a): one model per task, backbone fine-tuned, no
  adapters, the same steps as (a).
- ``multi``, the paper's: a teacher is the multi-task model of (c) fine-tuned on its task alone
  (backbone, the task's PAL and head), at MT-DNN's own learning rates (the same as the multi-task
  stage) for one epoch of the task (a third of (a)'s steps: ``FINETUNE_FRACTION``). The (c)
  model is trained once (seed ``seed``) and kept with ``save_pretrained`` in the cache; each
  teacher copies its backbone, PAL and head from it before step 0.
  Start and teachers use the ``pal`` preset as it is: ``--adapter-set`` changes the student only.

Each teacher's class probabilities (STS-B: its predictions) on the *student's* training rows, in
order, are written once with ``write_teacher_probabilities``; the student reads them back by row
(``distill: {probabilities: ...}``), and the soft target of a task is the mean over its teachers.

The probability files and the saved (c) model are model outputs, not results: they live in
``--teacher-cache`` (``benchmarks/.cache/glue_teachers/``, ignored by git) and are reused while
present. Each teacher's own dev metrics (and the (c) start's) are results:
``<results>/<profile>/teachers/<name>.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import torch
from common import write_json
from glue_data import TASKS
from glue_runs import BackboneFactory, Budget, _train_config, train_with_package
from torch.utils.data import DataLoader

from pal_adapters.model import MultiTaskModel
from pal_adapters.training.data import DynamicPaddingCollator
from pal_adapters.training.distill import write_teacher_probabilities
from pal_adapters.training.setup import prepare_data
from pal_adapters.training.taskdefs import TaskDef

ENSEMBLE = {"rte": 3, "mrpc": 3}  # teachers per task (seeds seed, seed+1, ...); 1 for the others
TEACHER = (("freeze_backbone", False),)  # configuration (a): tuned backbone, adapters dropped
MULTI = (("freeze_backbone", False), ("adapter", "pal"))  # configuration (c)
FINETUNE_FRACTION = 1 / 3  # recipe "multi": one epoch of the task (a's budget is three)
RECIPES = ("single", "multi")


@dataclasses.dataclass(frozen=True)
class _Where:
    cache: Path  # probability files and the saved (c) start: model outputs
    records: Path  # each teacher's dev metrics: results


def teacher_probabilities(recipe: str, defs: dict[str, TaskDef], budget: Budget, backbone: BackboneFactory,
                          work: Path, profile: str, results_dir: Path, cache_dir: Path,
                          ) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Train (or reuse) every task's teachers by ``recipe``: task -> probability files, and task ->
    their dev runs."""
    if recipe not in RECIPES:
        raise ValueError(f"teacher recipe {recipe!r}: expected one of {RECIPES}")
    where = _Where(cache_dir / profile, results_dir / profile / "teachers")
    train, prefix = (_single, "") if recipe == "single" else (_multi(defs, budget, backbone, work, where),
                                                               f"from-{_start_name(defs, budget)}-")
    files: dict[str, list[str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for task, definition in defs.items():
        for k in range(ENSEMBLE.get(task, 1)):
            name = f"{task}-{prefix}seed{budget.seed + k}"
            probs, record = where.cache / f"{name}.safetensors", where.records / f"{name}.json"
            if not (probs.is_file() and record.is_file()):
                seeded = dataclasses.replace(budget, seed=budget.seed + k)
                run = train(task, definition, seeded, backbone, work / name,
                            lambda trainer, t=task, p=probs: _write(trainer, t, budget, work, p))
                write_json(record, {"task": task, "seed": seeded.seed, "recipe": recipe, **run})
            files.setdefault(task, []).append(str(probs))
            runs.setdefault(task, []).append(json.loads(record.read_text()))
    return files, runs


def _single(task: str, definition: TaskDef, budget: Budget, backbone: BackboneFactory, out: Path, keep):
    """Recipe ``single``: configuration (a) on ``task``."""
    print(f"\n--- teacher {out.name}: {budget.steps[task]} steps", flush=True)
    return train_with_package({task: definition}, budget.steps[task], budget, backbone, out, dict(TEACHER),
                              adapters=False, keep=keep)


def _multi(defs: dict[str, TaskDef], budget: Budget, backbone: BackboneFactory, work: Path, where: _Where):
    """Recipe ``multi``: a trainer of teachers fine-tuned from (c), which is trained (or read) once,
    when the first teacher needs it."""
    start = functools.cache(lambda: _multitask_start(defs, budget, backbone, work, where))

    def train(task: str, definition: TaskDef, seeded: Budget, backbone: BackboneFactory, out: Path, keep):
        steps = max(1, round(budget.steps[task] * FINETUNE_FRACTION))
        state = start()
        print(f"\n--- teacher {out.name}: (c) fine-tuned for {steps} steps", flush=True)
        return train_with_package({task: definition}, steps, seeded, backbone, out, dict(MULTI), keep=keep,
                                  start=lambda trainer: _copy_from(trainer.model, state))

    return train


def _start_name(defs: dict[str, TaskDef], budget: Budget) -> str:
    return ("c" if list(defs) == list(TASKS) else "c-" + "+".join(defs)) + f"-seed{budget.seed}"


def _multitask_start(defs: dict[str, TaskDef], budget: Budget, backbone: BackboneFactory, work: Path,
                     where: _Where) -> dict[str, torch.Tensor]:
    """The weights of configuration (c) on ``defs`` (seed ``budget.seed``), trained once and kept
    with ``save_pretrained`` in the cache; its dev run is recorded beside the teachers'."""
    name = _start_name(defs, budget)
    saved, record = where.cache / name, where.records / f"{name}.json"
    if not (saved.is_dir() and record.is_file()):
        steps = sum(budget.steps.values())
        print(f"\n--- the teachers' start {name}: configuration (c), {steps} steps", flush=True)
        run = train_with_package(defs, steps, budget, backbone, work / name, dict(MULTI),
                                 keep=lambda trainer: trainer.model.save_pretrained(saved))
        write_json(record, {"tasks": list(defs), "seed": budget.seed, **run})
    return MultiTaskModel.from_pretrained(saved, backbone=backbone()[0]).state_dict()


def _copy_from(model: MultiTaskModel, state: dict[str, torch.Tensor]) -> None:
    """Start a one-task model from (c): its backbone, the task's PAL and head, every tensor by name
    (a one-task model's names are a subset of the multi-task model's)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"the multi-task start lacks {len(missing)} of this model's tensors, e.g. {missing[:3]}: "
                       "was it trained on other tasks, or with another adapter?")
    model.load_state_dict({k: state[k] for k in own})


def _write(trainer, task: str, budget: Budget, work: Path, path: Path) -> None:
    """The trained teacher's outputs on the student's training rows of ``task`` (its seed's sample)."""
    student = _train_config(budget, 1, work / "student-rows", {})
    rows = prepare_data({task: trainer.data[task].definition}, trainer.tokenizer, student,
                        cache_dir=budget.cache_dir)[task].train
    batches = DataLoader(rows, batch_size=64, collate_fn=DynamicPaddingCollator(trainer.tokenizer))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_teacher_probabilities(trainer.model, task, batches, path)
