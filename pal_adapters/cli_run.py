"""The ``train`` and ``eval`` commands and what they share with the others: run files, ``--set``
overrides, task-name lists, and a saved model on its base encoder (the saved model's own task
definitions win over the run file's). Imports nothing heavy at the top, as cli.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .training.config import RunFile
    from .training.taskdefs import TaskDef

log = logging.getLogger("pal_adapters.cli")


# ---- shared helpers ----------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A YAML scalar or flow value; ``1e-3`` is a float too (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {item!r} must look like key=value (e.g. --set lr=3e-5)")
    return key.strip(), parse_value(value)


def read_run(path: str, overrides: dict[str, Any]) -> RunFile:
    """The run file with ``overrides`` as ``training`` fields; a wrongly typed value is a user error."""
    from .training.config import read_run_file

    try:
        return read_run_file(path, overrides)
    except TypeError as err:
        raise ValueError(f"{path}: a training field has the wrong type ({err})") from err


def task_definitions(run: RunFile, data_dir: str | None) -> dict[str, TaskDef]:
    """The run's task definitions; inline ones resolve relative data paths against the run file."""
    from .training.taskdefs import load_task_defs

    if data_dir is None and isinstance(run.tasks, dict) and "data_dir" not in run.tasks:
        data_dir = str(run.root)
    return load_task_defs(run.tasks, data_dir=data_dir)


def split_names(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``; None stays None."""
    if not values:
        return None
    return [name.strip() for v in values for name in v.split(",") if name.strip()]


# ---- train -------------------------------------------------------------------------------------
def training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"model": args.model, "output_dir": args.output_dir, "max_steps": args.max_steps,
             "epochs": args.epochs, "batch_size": args.batch_size}
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_override(item) for item in args.set or ())
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .training.loop import MultiTaskTrainer
    from .training.report import format_eval_table

    run = read_run(args.run_yaml, training_overrides(args))
    defs = task_definitions(run, args.data_dir)
    config = run.train
    log.info("training %s on tasks %s", config.model, list(defs))
    trainer = MultiTaskTrainer(config, defs)
    main_process = trainer.accelerator.is_main_process  # under accelerate launch / torchrun: print once
    if main_process:
        print(f"model {config.model}, adapter {config.adapter}, {trainer.total_steps} steps, tasks {list(defs)}")
        print(trainer.model.parameter_report(), flush=True)
    result = trainer.fit(resume=args.resume)
    if not main_process:
        return 0
    if result.best_metrics:
        print(f"\nbest dev metrics (step {result.best_step}, score {result.best_score:.4f}):")
        print(format_eval_table(result.best_metrics))
    else:
        print("\nno dev evaluation ran (no task has a dev split)")
    out = result.output_dir
    print(f"\n{result.steps} steps done. outputs in {out}/: best/ (best dev score), last/, checkpoint/, "
          "log.jsonl, curves.png")
    return 0


# ---- eval --------------------------------------------------------------------------------------
def dev_only(defs: dict[str, TaskDef]) -> dict[str, TaskDef]:
    """The tasks with a dev split, their training split dropped (nothing to read or tokenize)."""
    return {n: dataclasses.replace(d, data=dataclasses.replace(d.data, train=None))
            for n, d in defs.items() if d.data.dev is not None}


def cmd_eval(args: argparse.Namespace) -> int:
    from .training.evaluate import evaluate
    from .training.report import format_eval_table, to_jsonable
    from .training.setup import dev_loaders, prepare_data

    run = read_run(args.run_yaml, {"model": args.model} if args.model else {})
    defs = dev_only(task_definitions(run, args.data_dir))
    wanted = split_names(args.tasks) or list(defs)
    unknown = [t for t in wanted if t not in defs]
    if unknown:
        raise ValueError(f"--tasks {unknown}: not tasks with a dev set in {args.run_yaml}; choose from {list(defs)}")
    model, tokenizer = load_saved(args.model_dir, run.train.model)
    absent = [t for t in wanted if t not in model.tasks]
    if absent:
        raise ValueError(f"tasks {absent} are not in {args.model_dir} (it holds {model.task_names}); "
                         "choose others with --tasks")
    config = run.train.replace(batch_size=args.batch_size or run.train.batch_size,
                               max_eval_examples=run.train.max_eval_examples if args.max_examples is None
                               else args.max_examples)
    data = prepare_data({t: as_saved(defs[t], model.tasks[t]) for t in wanted}, tokenizer, config)
    results = evaluate(model, dev_loaders(data, tokenizer, config.batch_size),
                       {t: data[t].definition.metrics for t in wanted})
    print(json.dumps(to_jsonable(results), indent=2) if args.json else format_eval_table(results))
    return 0


def as_saved(definition: TaskDef, saved: Any) -> TaskDef:
    """The run file's task definition with the saved model's own task (kind options, length, input
    form): the data is read and windowed as the model was trained, whatever the run file says now."""
    if saved != definition.task:
        given = definition.task.to_dict()
        changed = sorted(k for k, v in saved.to_dict().items() if given.get(k) != v)
        log.warning("task %r: using the saved model's %s, not the run file's", definition.name, changed)
    return dataclasses.replace(definition, task=saved)


def load_saved(model_dir: str, model_name: str | None):
    """A saved multi-task model on its base encoder (``model_name``, default the one it records)."""
    from .model import MultiTaskModel
    from .save_format import read_model
    from .training.setup import load_backbone

    if model_name is None:  # the name it was trained from ("minilm", a hub id), checked like every field
        model_name = read_model(Path(model_dir)).base["name_or_path"]
        if not model_name:
            raise ValueError(f"{model_dir} records no base model name; pass --model")
    backbone, tokenizer = load_backbone(model_name)
    model = MultiTaskModel.from_pretrained(model_dir, backbone=backbone)
    return model.eval(), tokenizer
