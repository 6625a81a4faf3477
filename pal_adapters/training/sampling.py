"""Which task trains at each step: round robin, proportional, square root, annealed, MT-DNN.

With N_i the size of task i (examples or batches; only ratios matter):

- ``round_robin``: tasks in a fixed order (the order of ``sizes``), one per step, continuing across
  epoch boundaries. Unlike the PALs reference code, it really rotates.
- ``proportional``: p_i ∝ N_i, drawn independently each step.
- ``sqrt``: p_i ∝ N_i^0.5.
- ``annealed``: p_i ∝ N_i^α with α = 1 − 0.8·(e−1)/(E−1) (PALs §4.1): proportional in the first
  epoch, close to uniform (α = 0.2) in the last, so small tasks get more steps late in training.
- ``mtdnn``: MT-DNN's shuffled mini-batches, i.e. proportional *without* replacement: task i
  appears exactly N_i times per epoch (N_i must then count batches), in a random order.

Mixed batches (``draw(batch_size, mixed=True)``) draw each row's task from the same
``probabilities(epoch)``: round robin is then uniform and ``mtdnn`` proportional (rows cannot be
drawn without replacement); the cursor advances one step per batch as in one-task sampling.

Schedules are pure functions of (seed, epoch, sizes, config): the random stream of epoch e is seeded
with ``(seed, e)``, and a mixed batch's draw with ``(seed, position)``, so any step can be
regenerated and a run resumed mid-epoch from ``state_dict()`` without replaying earlier draws.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from pal_adapters.validation import check_choice

Strategy = Literal["round_robin", "proportional", "sqrt", "annealed", "mtdnn"]

# Annealing goes from α = 1 (first epoch) to α = 1 − ANNEAL_DROP = 0.2 (last epoch), as in PALs.
ANNEAL_DROP = 0.8


@dataclass(frozen=True)
class SamplingConfig:
    """How tasks are scheduled.

    Attributes:
        strategy: see the module docstring.
        seed: seeds every epoch's random stream together with the epoch number.
        num_epochs: E, the number of epochs (sets the annealing schedule and the valid epochs).
        steps_per_epoch: steps per epoch; ``None`` means sum(N_i), one pass over every task's data.
            For ``mtdnn`` it may not exceed sum(N_i) (a shorter epoch is a prefix of the shuffle).
    """

    strategy: Strategy = "annealed"
    seed: int = 0
    num_epochs: int = 1
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, get_args(Strategy))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be a non-negative integer")
        if not isinstance(self.num_epochs, int) or self.num_epochs < 1:
            raise ValueError(f"num_epochs={self.num_epochs!r} must be an integer >= 1")
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int)
                                                 or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch!r} must be an integer >= 1 or None")


def _check_epoch(epoch: int, num_epochs: int) -> None:
    if not isinstance(epoch, int) or not 1 <= epoch <= num_epochs:
        raise ValueError(f"epoch={epoch!r} is out of range; epochs count from 1 to num_epochs={num_epochs}")


def annealing_alpha(epoch: int, num_epochs: int) -> float:
    """α = 1 − 0.8·(e−1)/(E−1) for epoch e in 1..E; 1.0 when E = 1 (nothing to anneal)."""
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs!r} must be an integer >= 1")
    _check_epoch(epoch, num_epochs)
    if num_epochs == 1:
        return 1.0
    return 1.0 - ANNEAL_DROP * (epoch - 1) / (num_epochs - 1)


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    if not sizes:
        raise ValueError("sizes={} is empty; give at least one task with its number of examples or batches")
    for task, n in sizes.items():
        if not isinstance(task, str) or not task:
            raise ValueError(f"task name {task!r} must be a non-empty string")
        # bool is an int subclass; True as a size is almost certainly a mistake.
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"sizes[{task!r}]={n!r} must be a positive integer")
    return {task: int(n) for task, n in sizes.items()}


class TaskSampler:
    """Task schedule for multi-task training, resumable mid-epoch.

    Pure use: ``probabilities(epoch)`` and ``epoch_schedule(epoch)``. Stateful use: iterate
    (``next(sampler)`` yields task names across all epochs) and checkpoint with ``state_dict()``.
    """

    def __init__(self, sizes: Mapping[str, int], config: SamplingConfig | None = None) -> None:
        self.sizes = _check_sizes(sizes)
        self.config = config if config is not None else SamplingConfig()
        self.tasks: tuple[str, ...] = tuple(self.sizes)
        total = sum(self.sizes.values())
        self.steps_per_epoch = self.config.steps_per_epoch or total
        if self.config.strategy == "mtdnn" and self.steps_per_epoch > total:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch} exceeds the {total} batches of an "
                             f"epoch; mtdnn samples without replacement (use 'proportional' to oversample)")
        self.epoch, self.step = 1, 0  # cursor: the next task is epoch_schedule(epoch)[step]
        self._cache: tuple[int, list[str]] | None = None

    def probabilities(self, epoch: int = 1) -> dict[str, float]:
        """Per-task probability of a step in ``epoch`` (round robin: its long-run share, 1/T)."""
        _check_epoch(epoch, self.config.num_epochs)
        strategy = self.config.strategy
        n = np.array([self.sizes[t] for t in self.tasks], dtype=np.float64)
        if strategy == "round_robin":
            weights = np.ones_like(n)
        elif strategy in ("proportional", "mtdnn"):
            weights = n
        elif strategy == "sqrt":
            weights = np.sqrt(n)
        else:
            weights = n ** annealing_alpha(epoch, self.config.num_epochs)
        probs = weights / weights.sum()
        return {task: float(p) for task, p in zip(self.tasks, probs, strict=True)}

    def epoch_schedule(self, epoch: int) -> list[str]:
        """The task of every step of ``epoch``: a list of ``steps_per_epoch`` task names."""
        _check_epoch(epoch, self.config.num_epochs)
        steps, num_tasks = self.steps_per_epoch, len(self.tasks)
        if self.config.strategy == "round_robin":
            # Continue the rotation from the previous epoch so no task is favoured at boundaries.
            start = (epoch - 1) * steps
            return [self.tasks[(start + i) % num_tasks] for i in range(steps)]
        rng = np.random.default_rng([self.config.seed, epoch])
        if self.config.strategy == "mtdnn":
            pool = np.repeat(np.arange(num_tasks), [self.sizes[t] for t in self.tasks])
            order = rng.permutation(pool)[:steps]
        else:
            probs = np.array(list(self.probabilities(epoch).values()))
            order = rng.choice(num_tasks, size=steps, p=probs)
        return [self.tasks[i] for i in order]

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule: ``num_epochs × steps_per_epoch``."""
        return self.config.num_epochs * self.steps_per_epoch

    @property
    def position(self) -> int:
        """Steps drawn so far, over all epochs (the run's micro-step clock)."""
        return (self.epoch - 1) * self.steps_per_epoch + self.step

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        """The next task name; ``StopIteration`` after the last step of the last epoch."""
        self._check_not_done()
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.epoch_schedule(self.epoch))
        task = self._cache[1][self.step]
        self._advance()
        return task

    def draw(self, batch_size: int, mixed: bool = False) -> dict[str, int]:
        """The next step's rows per task, in task order, and advance one step.

        One task per step: ``{next(self): batch_size}``. Mixed: a multinomial draw of
        ``batch_size`` rows by ``probabilities(epoch)``, seeded by ``(seed, position)`` so that
        every process draws the same; tasks that get no row are left out.
        """
        if not mixed:
            return {next(self): batch_size}
        self._check_not_done()
        rng = np.random.default_rng([self.config.seed, self.position])
        counts = mixed_counts(self.probabilities(self.epoch), batch_size, rng)
        self._advance()
        return counts

    def _check_not_done(self) -> None:
        if self.epoch > self.config.num_epochs:
            raise StopIteration

    def _advance(self) -> None:
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable cursor plus what the schedule depends on (checked on load)."""
        return {"epoch": self.epoch, "step": self.step, "sizes": dict(self.sizes),
                "config": asdict(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved (epoch, step); refuse a state from a different schedule."""
        missing = sorted({"epoch", "step", "sizes", "config"} - set(state))
        if missing:
            raise ValueError(f"sampler state is missing keys {missing}")
        expected = {"sizes": dict(self.sizes), "config": asdict(self.config)}
        for key, value in expected.items():
            if dict(state[key]) != value:
                raise ValueError(f"sampler state has {key}={dict(state[key])!r} but this sampler has "
                                 f"{key}={value!r}; the resumed schedule would differ")
        epoch, step = state["epoch"], state["step"]
        if not (1 <= epoch <= self.config.num_epochs + 1 and 0 <= step < self.steps_per_epoch):
            raise ValueError(f"sampler state epoch={epoch!r}, step={step!r} is out of range for "
                             f"num_epochs={self.config.num_epochs}, steps_per_epoch={self.steps_per_epoch}")
        self.epoch, self.step = int(epoch), int(step)


def mixed_counts(probabilities: Mapping[str, float], batch_size: int, rng: np.random.Generator) -> dict[str, int]:
    """How many rows of a mixed batch each task gets: a multinomial draw by the task probabilities."""
    tasks = list(probabilities)
    counts = rng.multinomial(batch_size, [probabilities[t] for t in tasks])
    return {t: int(c) for t, c in zip(tasks, counts, strict=True) if c}
