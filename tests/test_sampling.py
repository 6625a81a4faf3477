from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from pal_adapters.training.sampling import SamplingConfig, TaskSampler, annealing_alpha

SIZES = {"small": 100, "medium": 400, "large": 1600}
DRAWS = 40_000


def expected_probs(sizes: dict[str, int], power: float) -> dict[str, float]:
    weights = {t: n**power for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def assert_frequencies_match(schedule: list[str], probs: dict[str, float]) -> None:
    counts = Counter(schedule)
    n = len(schedule)
    for task, p in probs.items():
        # 5 binomial standard deviations: a false failure is ~1e-6 likely, a wrong formula is caught.
        tol = 5 * math.sqrt(p * (1 - p) / n)
        assert abs(counts[task] / n - p) < tol, (task, counts[task] / n, p)


@pytest.mark.parametrize(("strategy", "power"), [("proportional", 1.0), ("sqrt", 0.5)])
def test_static_strategies_sample_with_formula_frequencies(strategy: str, power: float) -> None:
    sampler = TaskSampler(SIZES, SamplingConfig(strategy, seed=3, steps_per_epoch=DRAWS))
    probs = expected_probs(SIZES, power)
    assert sampler.probabilities(1) == pytest.approx(probs)
    assert_frequencies_match(sampler.epoch_schedule(1), probs)


def test_annealing_alpha_follows_formula_from_one_to_point_two() -> None:
    num_epochs = 5
    for epoch in range(1, num_epochs + 1):
        assert annealing_alpha(epoch, num_epochs) == pytest.approx(1 - 0.8 * (epoch - 1) / (num_epochs - 1))
    assert annealing_alpha(1, num_epochs) == pytest.approx(1.0)
    assert annealing_alpha(num_epochs, num_epochs) == pytest.approx(0.2)
    assert annealing_alpha(1, 1) == pytest.approx(1.0)


def test_annealed_sampling_flattens_towards_small_tasks_each_epoch() -> None:
    num_epochs = 3
    sampler = TaskSampler(SIZES, SamplingConfig("annealed", seed=1, num_epochs=num_epochs,
                                                steps_per_epoch=DRAWS))
    for epoch in range(1, num_epochs + 1):
        alpha = 1 - 0.8 * (epoch - 1) / (num_epochs - 1)
        probs = expected_probs(SIZES, alpha)
        assert sampler.probabilities(epoch) == pytest.approx(probs)
        assert_frequencies_match(sampler.epoch_schedule(epoch), probs)
    assert sampler.probabilities(3)["small"] > sampler.probabilities(1)["small"]


def test_round_robin_rotates_in_order_across_epochs() -> None:
    order = list(SIZES)
    # 7 steps per epoch is not a multiple of 3 tasks: the rotation must continue over the boundary.
    sampler = TaskSampler(SIZES, SamplingConfig("round_robin", num_epochs=3, steps_per_epoch=7))
    schedule = [t for epoch in (1, 2, 3) for t in sampler.epoch_schedule(epoch)]
    assert schedule == [order[i % 3] for i in range(21)]
    for start in range(0, 21, 3):
        assert schedule[start:start + 3] == order
    assert sampler.probabilities(1) == pytest.approx({t: 1 / 3 for t in order})


def test_mtdnn_yields_every_batch_exactly_once_per_epoch_shuffled() -> None:
    sizes = {"a": 5, "b": 17, "c": 40}
    sampler = TaskSampler(sizes, SamplingConfig("mtdnn", seed=0, num_epochs=2))
    first, second = sampler.epoch_schedule(1), sampler.epoch_schedule(2)
    assert Counter(first) == Counter(sizes) == Counter(second)
    assert len(first) == sum(sizes.values())
    grouped = [t for t in sizes for _ in range(sizes[t])]
    assert first != grouped and first != second


@pytest.mark.parametrize("strategy", ["proportional", "sqrt", "annealed", "mtdnn"])
def test_schedule_is_a_function_of_the_seed(strategy: str) -> None:
    def schedule(seed: int) -> list[str]:
        return TaskSampler(SIZES, SamplingConfig(strategy, seed=seed, num_epochs=2)).epoch_schedule(2)

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


@pytest.mark.parametrize("strategy", ["round_robin", "annealed", "mtdnn"])
@pytest.mark.parametrize("stop_after", [0, 23, 50, 73])
def test_resume_from_state_dict_reproduces_the_rest_of_the_run(strategy: str, stop_after: int) -> None:
    sizes = {"a": 10, "b": 30, "c": 10}
    config = SamplingConfig(strategy, seed=5, num_epochs=2)
    uninterrupted = list(TaskSampler(sizes, config))
    assert len(uninterrupted) == 2 * sum(sizes.values())

    first = TaskSampler(sizes, config)
    head = [next(first) for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint must survive JSON
    resumed = TaskSampler(sizes, config)
    resumed.load_state_dict(state)
    assert head + list(resumed) == uninterrupted


def test_load_state_dict_refuses_a_different_schedule() -> None:
    state = TaskSampler(SIZES, SamplingConfig("sqrt", seed=1)).state_dict()
    with pytest.raises(ValueError, match="seed"):
        TaskSampler(SIZES, SamplingConfig("sqrt", seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match="sizes"):
        TaskSampler({**SIZES, "large": 1601}, SamplingConfig("sqrt", seed=1)).load_state_dict(state)
    with pytest.raises(ValueError, match="step=5000"):
        TaskSampler(SIZES, SamplingConfig("sqrt", seed=1)).load_state_dict({**state, "step": 5000})


def test_bad_inputs_raise_naming_the_value() -> None:
    with pytest.raises(ValueError, match="empty"):
        TaskSampler({})
    with pytest.raises(ValueError, match=r"sizes\['b'\]=-3"):
        TaskSampler({"a": 1, "b": -3})
    with pytest.raises(ValueError, match=r"sizes\['a'\]=0"):
        TaskSampler({"a": 0})
    with pytest.raises(ValueError, match=r"sizes\['a'\]=2.5"):
        TaskSampler({"a": 2.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="strategy='random'.*'round_robin'.*'mtdnn'"):
        SamplingConfig("random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_epochs=0"):
        SamplingConfig(num_epochs=0)
    with pytest.raises(ValueError, match="steps_per_epoch=10"):
        TaskSampler({"a": 3, "b": 4}, SamplingConfig("mtdnn", steps_per_epoch=10))


@pytest.mark.parametrize("epoch", [0, 4, -1])
def test_epoch_out_of_range_raises(epoch: int) -> None:
    sampler = TaskSampler(SIZES, SamplingConfig("annealed", num_epochs=3))
    with pytest.raises(ValueError, match=f"epoch={epoch}"):
        sampler.probabilities(epoch)
    with pytest.raises(ValueError, match=f"epoch={epoch}"):
        sampler.epoch_schedule(epoch)
    with pytest.raises(ValueError, match=f"epoch={epoch}"):
        annealing_alpha(epoch, 3)


@pytest.mark.parametrize("mixed", [False, True])
def test_draw_follows_the_schedule_and_resumes_mid_epoch(mixed: bool) -> None:
    sizes = {"a": 10, "b": 30, "c": 10}
    config = SamplingConfig("annealed", seed=5, num_epochs=2)
    reference = TaskSampler(sizes, config)
    uninterrupted = [reference.draw(16, mixed) for _ in range(reference.total_steps)]
    assert reference.position == reference.total_steps == 100
    if not mixed:  # one task per step: the schedule's task with the whole batch
        schedule = TaskSampler(sizes, config).epoch_schedule(1) + TaskSampler(sizes, config).epoch_schedule(2)
        assert uninterrupted == [{t: 16} for t in schedule]
    else:  # a task per row: batch_size rows in task order, tasks without rows left out
        assert all(sum(c.values()) == 16 and list(c) == [t for t in sizes if t in c] for c in uninterrupted)
        assert len({tuple(c.items()) for c in uninterrupted}) > 10  # each step its own draw
    first = TaskSampler(sizes, config)
    head = [first.draw(16, mixed) for _ in range(37)]
    resumed = TaskSampler(sizes, config)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [resumed.draw(16, mixed) for _ in range(63)] == uninterrupted
    with pytest.raises(StopIteration):
        resumed.draw(16, mixed)
