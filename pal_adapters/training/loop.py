"""The multi-task training loop on Accelerate: one sampled task per micro-step (or mixed batches).

    step:  for each of grad_accum micro-batches: the batcher's next batch (this process's rows,
           grouped by task) -> forward (routed by its task segments) -> objective (weighted,
           distilled) -> backward;  then average gradients over processes, clip, optimizer, LR step.
    every eval_every steps: every task's dev metrics, the best model by their sum, a checkpoint.

The same code runs on one CPU or under ``accelerate launch`` / ``torchrun`` on many processes;
an unsharded model is prepared by Accelerate as DistributedDataParallel (``grad_sync: ddp``, with
``find_unused_parameters``: a step leaves the other tasks' parameters without gradients) or left
alone for one flat all-reduce per step (``grad_sync: flat``, ``distributed.py``); with
``sharding: fsdp`` it is sharded by FSDP2 (``sharding.py``), every process runs every forward
(evaluations too: sharded units gather on all processes) and the main process saves the gathered
full weights. DDP and FSDP both need every process to run each micro-step's forward and backward:
the batcher gives a process without rows of a drawn task a stand-in row of weight 0.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator, DistributedType
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from ..atomic import recover_directory, remove_stale_files
from ..model import MultiTaskModel, add_pal
from ..saving import save_pretrained
from ..tasks.base import TaskKind
from ..validation import from_fields
from .batcher import Batcher, Schedule
from .checkpoint import CheckpointError, load_checkpoint, recover_checkpoint, rng_state, save_checkpoint
from .config import TrainConfig
from .data import DynamicPaddingCollator
from .distill import DistillConfig, TeacherEnsemble
from .distributed import all_reduce_gradients, any_process, data_parallel, make_accelerator, synced_if
from .evaluate import combined_score, evaluate
from .interrupt import StopSignals, TrainingInterrupted
from .losses import LossWeighting
from .objective import Objective
from .report import JsonlLogger, format_eval_table, plot_training_curves, read_jsonl, truncate_log
from .resources import configure_threads, return_freed_memory
from .setup import TaskData, build_optimizer, build_schedule, dev_loaders, load_backbone, prepare_data
from .sharding import clip_grad_norm, full_optimizer_state, gathered, is_sharded, is_sharded_parameter, shard_model
from .streams import TaskStream
from .taskdefs import TaskDef


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    best_step: int
    best_score: float
    best_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class MultiTaskTrainer:
    """Train a multi-task model on task definitions; ``fit()`` runs (or resumes) the run."""

    def __init__(self, config: TrainConfig, task_defs: dict[str, TaskDef], *, backbone=None, tokenizer=None,
                 accelerator: Accelerator | None = None, cache_dir: str | None = None):
        configure_threads(config.num_threads)  # no more threads than cores: oversubscribed steps are slower
        return_freed_memory()  # each step's activations go back to the system (resources.py)
        self.accelerator = accelerator or make_accelerator(config)
        if self.accelerator.distributed_type == DistributedType.FSDP:  # `accelerate launch` with an FSDP config:
            config = config.replace(sharding="fsdp")  # our fully_shard (accelerate never prepares the model)
        self.config = config
        set_seed(config.seed)
        if backbone is None:
            backbone, tokenizer = load_backbone(config.model)
        self.tokenizer = tokenizer
        self.out = Path(config.output_dir)
        self.data: dict[str, TaskData] = prepare_data(task_defs, tokenizer, config, cache_dir)
        self.train_tasks = [n for n, d in self.data.items() if d.train is not None]
        if not self.train_tasks:
            raise ValueError(f"no task has a training split: {list(self.data)}")
        tasks = {n: d.definition.task for n, d in self.data.items()}
        self.model: MultiTaskModel = add_pal(backbone, tasks, adapter=config.adapter,
                                             freeze_backbone=config.freeze_backbone)
        if config.init_heads_from_labels:
            for n in self.train_tasks:  # a resumed run loads its heads from the checkpoint afterwards
                kind = self.model.heads[n].kind
                if type(kind).init_head is not TaskKind.init_head:  # only read the labels when used
                    kind.init_head(self.model.heads[n].out, self.data[n].train["labels"])
        self.model.to(self.accelerator.device)
        if config.sharding == "fsdp":  # before the optimizer: FSDP replaces the parameters by their shards
            shard_model(self.model, self.accelerator.mixed_precision)
        self.sharded = is_sharded(self.model)
        ddp = not self.sharded and config.grad_sync == "ddp"
        self.forward_model = data_parallel(self.accelerator, self.model) if ddp else self.model  # (its DDP)
        self.ddp = self.forward_model is not self.model
        self.weighting = LossWeighting(self.train_tasks, config.loss_weighting, config.task_weights or None)
        self.weighting.to(self.accelerator.device)
        self._build_schedule_objects()
        self.objective = self._objective()
        self.dev = dev_loaders(self.data, tokenizer, config.batch_size)
        self.metrics = {n: d.definition.metrics for n, d in self.data.items() if d.dev is not None}
        self._checkpointed_step: int | None = None  # the step of the checkpoint this process last wrote

    # ---- construction ---------------------------------------------------------------------
    def _build_schedule_objects(self) -> None:
        c, acc = self.config, self.accelerator
        streams = {n: TaskStream(n, self.data[n].train, c.batch_size, c.seed, kind=self.data[n].definition.kind)
                   for n in self.train_tasks}  # in the model's task order, as the batcher's segments must be
        self.schedule = Schedule.of(c, {n: len(s) for n, s in streams.items()})
        self.total_steps, self.epoch_steps = self.schedule.total_steps, self.schedule.epoch_steps
        self.batcher = Batcher.for_run(c, streams, self.schedule, DynamicPaddingCollator(self.tokenizer),
                                       self.tokenizer.pad_token_id or 0, acc.process_index, acc.num_processes,
                                       every_task=self.sharded or self.ddp)
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = model_params + list(self.weighting.parameters())
        # DDP all-reduces the model's gradients and FSDP reduce-scatters its shards' gradients; the
        # rest (loss weights; everything under grad_sync: flat) are averaged here, after the backward
        engine = {id(p) for p in model_params if self.ddp or is_sharded_parameter(p)}
        self.replicated = [p for p in self.trainable if id(p) not in engine]
        optimizer = build_optimizer(self.model, self.weighting, c)
        self.scheduler = build_schedule(optimizer, c, self.total_steps)
        # accelerate's FSDP2 refuses to prepare an optimizer without its model, and adds nothing here
        self.optimizer = optimizer if self.sharded else self.accelerator.prepare(optimizer)

    def _objective(self) -> Objective:
        kinds = {n: self.model.heads[n].kind for n in self.train_tasks}
        if not self.config.distill:
            return Objective(self.weighting, kinds)
        cfg = from_fields(DistillConfig, self.config.distill, "training field distill")  # names unknown keys
        teachers = TeacherEnsemble(cfg, backbone_factory=lambda: load_backbone(self.config.model)[0],
                                   tasks=self.model.tasks,
                                   num_examples={n: len(self.data[n].train) for n in self.train_tasks})
        return Objective(self.weighting, kinds, teachers.to(self.accelerator.device), cfg)

    # ---- one step -------------------------------------------------------------------------
    def _micro_step(self) -> dict[str, float]:
        """Forward and backward of the batcher's next micro-batch; returns its per-task losses."""
        batch = next(self.batcher).to(self.accelerator.device)
        if not batch.segments:  # a mixed batch's few rows all went to other processes
            return {}
        with self.accelerator.autocast():
            loss = self.objective(self.forward_model(**batch.model_inputs()), batch)
        self.accelerator.backward(loss.total / self.config.grad_accum)
        own = {s.task for s in batch.segments if s.share > 0}  # not the stand-ins of ``Batcher(every_task=True)``
        return {t: float(v.detach()) for t, v in loss.tasks.items() if t in own}

    def _optimizer_step(self, step: int) -> dict[str, float]:
        assert self.batcher.micro_step == step * self.config.grad_accum, "the batcher's clock is not the step's"
        losses: dict[str, list[float]] = {}
        self.model.train()
        for i in range(self.config.grad_accum):
            last = i == self.config.grad_accum - 1  # DDP all-reduces once, in the last backward
            with synced_if(last, self.forward_model):
                for t, v in self._micro_step().items():
                    losses.setdefault(t, []).append(v)
        if self.replicated:
            all_reduce_gradients(self.replicated, self.accelerator.num_processes)
        if self.config.max_grad_norm and self.sharded:
            clip_grad_norm(self.trainable, self.config.max_grad_norm)
        elif self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_([p for p in self.trainable if p.grad is not None],
                                             self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {t: sum(v) / len(v) for t, v in losses.items()}

    # ---- the run --------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``total_steps`` (from the last checkpoint with ``resume``). On SIGINT/SIGTERM the
        current step is finished and checkpointed, then ``TrainingInterrupted`` (exit status 130)."""
        acc = self.accelerator
        state = self._start(resume)
        log = JsonlLogger(self.out / "log.jsonl") if acc.is_main_process else None
        bar = tqdm(total=self.total_steps, initial=state["step"], desc="training", disable=not acc.is_main_process,
                   dynamic_ncols=True)
        with StopSignals() as stop:
            while state["step"] < self.total_steps:
                self._train_step(state, log, bar)
                if any_process(stop.requested is not None, acc.num_processes, acc.device):
                    self._stop(state, bar, stop.requested or "a signal to another process")
        bar.close()
        shared = [{k: state[k] for k in ("best_score", "best_step", "best_metrics")}]
        state.update(broadcast_object_list(shared)[0] if acc.num_processes > 1 else shared[0])  # main evaluated
        self._save_model(self.out / "last")
        if acc.is_main_process:
            plot_training_curves(read_jsonl(self.out / "log.jsonl"), self.out / "curves.png")
        acc.wait_for_everyone()
        return TrainResult(self.out, state["step"], state["best_step"], state["best_score"], state["best_metrics"])

    def _train_step(self, state: dict[str, Any], log: JsonlLogger | None, bar: tqdm) -> None:
        """One optimizer step and what is due after it: the log line, an evaluation, a checkpoint."""
        losses = self._optimizer_step(state["step"])
        state["step"] += 1
        bar.update(1)
        bar.set_postfix({t: f"{v:.3f}" for t, v in losses.items()}, refresh=False)
        pending: dict[str, list[float]] = state["pending"]  # each task's losses since the last log line
        for t, v in losses.items():
            pending.setdefault(t, []).append(v)
        if log and (state["step"] % self.config.log_every == 0 or state["step"] == 1):
            weights = self.weighting.task_weights()  # each task's loss multiplier (uncertainty: exp(-s_t))
            for t, values in pending.items():
                log.log({"kind": "train", "step": state["step"], "task": t, "loss": sum(values) / len(values),
                         "steps": len(values), "lr": self.scheduler.get_last_lr()[0], "weight": weights[t]})
            pending.clear()
        if self._due(state["step"], self.config.eval_every or self.epoch_steps):
            self._evaluate(state, log)
        if self.config.checkpoint_every and state["step"] % self.config.checkpoint_every == 0:
            self._checkpoint(state)

    def _stop(self, state: dict[str, Any], bar: tqdm, signal_name: str) -> None:
        """Checkpoint the finished step (unless it was just saved) and raise ``TrainingInterrupted``."""
        if self._checkpointed_step != state["step"]:
            self._checkpoint(state)
        bar.close()
        stop = TrainingInterrupted(state["step"], signal_name)
        if self.accelerator.is_main_process:
            print(stop, file=sys.stderr, flush=True)
        raise stop

    def _start(self, resume: bool) -> dict[str, Any]:
        """The state to start from: step 0, or the last complete checkpoint's (``resume``).

        The main process first clears what killed saves left in the output folder; the log keeps
        only the records up to the starting step, so every step is in it once.
        """
        acc = self.accelerator
        problem = [self._clean_output(resume) if acc.is_main_process else None]
        if acc.num_processes > 1:  # the main process's finding, on every process (and a barrier)
            problem = broadcast_object_list(problem)
        if problem[0] is not None:
            raise CheckpointError(problem[0])
        state = {"step": 0, "best_score": -math.inf, "best_step": 0, "best_metrics": {}, "pending": {}}
        if resume:
            state = self._restore()
        if acc.is_main_process:
            truncate_log(self.out / "log.jsonl", state["step"])
        return state

    def _clean_output(self, resume: bool) -> str | None:
        """Remove the leftovers of killed saves (this run owns its folder); on ``resume`` put the last
        complete checkpoint in place. Returns why resuming is impossible instead of raising it, so
        that every process can raise it."""
        for name in ("best", "last") if resume else ("best", "last", "checkpoint"):
            recover_directory(self.out / name)
        for name in ("curves.png", "log.jsonl"):
            remove_stale_files(self.out / name)
        if resume:
            try:
                step = recover_checkpoint(self.out / "checkpoint")
            except CheckpointError as err:
                return str(err)
            tqdm.write(f"resuming from {self.out / 'checkpoint'} at step {step}")
        return None

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    def _evaluate(self, state: dict[str, Any], log: JsonlLogger | None) -> None:
        acc = self.accelerator
        improved = False
        if (acc.is_main_process or self.sharded) and self.dev:  # sharded: every process runs the forwards
            kinds = {n: d.definition.kind for n, d in self.data.items()}  # with the task definitions' options
            results = evaluate(self.model, self.dev, self.metrics, kinds=kinds)
            score = combined_score(results, self.config.select_by)
            improved = score > state["best_score"]
            if acc.is_main_process:
                log.log({"kind": "eval", "step": state["step"], "metrics": results, "score": score})
                tqdm.write(f"step {state['step']}: score {score:.4f}\n{format_eval_table(results)}")
            if improved:
                state.update(best_score=score, best_step=state["step"], best_metrics=results)
        if self.sharded and acc.num_processes > 1:  # the main process's verdict, so all gather together
            improved = broadcast_object_list([improved])[0]
        if improved:
            self._save_model(self.out / "best")
        if acc.is_main_process and self.dev:
            plot_training_curves(read_jsonl(self.out / "log.jsonl"), self.out / "curves.png")
        if not self.config.checkpoint_every:
            self._checkpoint(state)

    def _trainer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, **self.batcher.state_dict()}  # "sampler" and "streams"

    def _save_model(self, directory: Path) -> None:
        """``save_pretrained`` by the main process (of the gathered weights, when sharded)."""
        with gathered(self.model, self.sharded):
            if self.accelerator.is_main_process:
                save_pretrained(self.model, directory)

    def _checkpoint(self, state: dict[str, Any]) -> None:
        acc = self.accelerator
        rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
        optimizer_state = full_optimizer_state(self.optimizer) if self.sharded or acc.is_main_process else None
        with gathered(self.model, self.sharded):
            if acc.is_main_process:
                save_checkpoint(self.out / "checkpoint", model=self.model, weighting=self.weighting,
                                optimizer_state=optimizer_state, scheduler=self.scheduler,
                                state=self._trainer_state(state), rank_rng=rngs)
        acc.wait_for_everyone()
        self._checkpointed_step = state["step"]

    def _restore(self) -> dict[str, Any]:
        saved = load_checkpoint(self.out / "checkpoint", model=self.model, weighting=self.weighting,
                                optimizer=self.optimizer, scheduler=self.scheduler, rank=self.accelerator.process_index)
        self.batcher.load_state_dict(saved)
        if self.batcher.micro_step != saved["step"] * self.config.grad_accum:
            raise CheckpointError(f"the checkpoint at step {saved['step']} has drawn {self.batcher.micro_step} "
                                  f"micro-batches, not step x grad_accum={self.config.grad_accum}: it was written "
                                  "with another grad_accum; resume with the run's own")
        # ``pending``: losses of steps not logged yet (absent from checkpoints of earlier versions)
        return {"pending": {}} | {k: saved[k] for k in ("step", "best_score", "best_step", "best_metrics", "pending")
                                  if k in saved}

