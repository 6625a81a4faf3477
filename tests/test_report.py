from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pal_adapters.training.report import (
    JsonlLogger,
    format_eval_table,
    moving_average,
    plot_training_curves,
    read_jsonl,
    to_jsonable,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_jsonl_round_trip_converts_tensors_and_rounds_floats(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a" / "log.jsonl"  # parent folders do not exist yet
    logger = JsonlLogger(path)
    logger.log({"kind": "train", "step": 1, "loss": torch.tensor(0.123456789), "lr": np.float32(2e-5)})
    logger.log({"kind": "eval", "step": np.int64(2), "metrics": {"sst2": {"accuracy": 1 / 3}},
                "vec": torch.tensor([1.5, 2.5]), "bad": math.nan, "path": tmp_path})
    records = read_jsonl(path)
    assert records[0] == {"kind": "train", "step": 1, "loss": 0.123457, "lr": pytest.approx(2e-5, rel=1e-6)}
    assert records[1] == {"kind": "eval", "step": 2, "metrics": {"sst2": {"accuracy": 0.333333}},
                          "vec": [1.5, 2.5], "bad": None, "path": str(tmp_path)}
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_read_jsonl_ignores_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    logger = JsonlLogger(path)
    logger.log({"step": 1})
    logger.log({"step": 2})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_reopening_the_log_drops_the_partial_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    JsonlLogger(path).log({"step": 3})
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'
    assert read_jsonl(path) == [{"step": 1}, {"step": 3}]


def test_read_jsonl_rejects_a_corrupt_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        read_jsonl(path)


def test_unloggable_values_are_named() -> None:
    with pytest.raises(TypeError, match="cannot log a value of type object"):
        to_jsonable({"x": object()})


def test_moving_average_is_a_trailing_mean() -> None:
    values = [4.0, 2.0, 6.0, 0.0, 8.0]
    expected = [np.mean(values[max(0, i - 2):i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(moving_average(values, 3), expected)
    np.testing.assert_allclose(moving_average(values, 1), values)
    with pytest.raises(ValueError, match="window=0"):
        moving_average(values, 0)


def curve_records(train: bool = True, evals: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    records: list[dict] = []
    for step in range(1, 61):
        if train:
            for task in ("sst2", "mrpc"):
                records.append({"kind": "train", "step": step, "task": task, "loss": 1 / step + rng.random() * 0.1})
        if evals and step % 20 == 0:
            metrics = {"sst2": {"accuracy": step / 100}, "mrpc": {"f1": step / 80, "accuracy": step / 90}}
            records.append({"kind": "eval", "step": step, "metrics": metrics, "score": step / 40})
    return records


@pytest.mark.parametrize("train,evals", [(True, True), (True, False), (False, True), (False, False)])
def test_plot_writes_a_png_whatever_records_are_missing(tmp_path: Path, train: bool, evals: bool) -> None:
    path = tmp_path / "plots" / "curves.png"
    assert plot_training_curves(curve_records(train, evals), path) == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # no temp file left


def test_plot_failure_leaves_the_previous_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_training_curves(curve_records(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_eval_table_aligns_tasks_and_metrics() -> None:
    table = format_eval_table({"mrpc": {"f1": 0.8, "accuracy": 0.61234}, "cola": {"mcc": math.nan}})
    lines = table.splitlines()
    assert lines[0].split() == ["task", "f1", "accuracy", "mcc"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["mrpc", "0.8000", "0.6123", "-"]
    assert lines[3].split() == ["cola", "-", "-", "nan"]
    assert len({len(line) for line in lines}) == 1  # fixed width
    # right-aligned: each value ends where its header ends
    assert lines[0].index("accuracy") + len("accuracy") == lines[2].index("0.6123") + len("0.6123")


def test_a_task_keeps_its_colour_in_both_panels_when_another_task_only_evaluates() -> None:
    from pal_adapters.training.report import _plot_eval, _plot_train, _task_colours

    records = [{"kind": "train", "step": s, "task": "b.x", "loss": 1.0 / s} for s in range(1, 4)]
    records += [{"kind": "eval", "step": 3, "metrics": {"a": {"acc": 0.5}, "b.x": {"acc": 0.6, "f1": 0.7}}}]
    colours = _task_colours(records)
    assert colours == {"a": "C0", "b.x": "C1"}  # "a" evaluates only; "b.x" (a dotted name) does both
    left, right = Figure().subplots(1, 2)
    _plot_train(left, records, None, colours)
    _plot_eval(right, records, colours)
    loss = {line.get_color() for line in left.get_lines()}
    metrics = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in right.get_lines()}
    assert loss == {"C1"}
    assert metrics == {"a.acc": ("C0", "-"), "b.x.acc": ("C1", "-"), "b.x.f1": ("C1", "--")}


def demo_like_records() -> list[dict]:
    """Six tasks' losses and three evaluations of 12 metrics and the score, as the demo logs them."""
    tasks = {"sst2": ["accuracy"], "mrpc": ["f1", "accuracy"], "stsb": ["pearson", "spearman"], "rte": ["accuracy"],
             "ner": ["f1", "precision", "recall", "accuracy"], "squad": ["exact_match", "f1"]}
    records = [{"kind": "train", "step": s, "task": t, "loss": 2.0 / s} for s in range(1, 61) for t in tasks]
    for step in (20, 40, 60):
        metrics = {t: {m: step / 100 + i / 50 for i, m in enumerate(ms)} for t, ms in tasks.items()}
        records.append({"kind": "eval", "step": step, "metrics": metrics, "score": step / 10})
    return records


def test_curves_legends_sit_outside_the_plotting_areas():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pal_adapters.training.report import training_curves_figure

    fig = training_curves_figure(demo_like_records())
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # lays the figure out
    loss_ax, metric_ax, score_ax = fig.axes
    assert score_ax.get_legend() is None  # the score is in the metrics' legend, not a second one over it
    labels = [t.get_text() for t in metric_ax.get_legend().get_texts()]
    assert len(labels) == 13 and labels[-1] == "score"
    for ax in (loss_ax, metric_ax):
        legend, area = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert not legend.overlaps(area), (ax.get_title(), legend, area)
        assert legend.y1 < area.y0 and fig.bbox.contains(legend.x0, legend.y0)  # below its panel, inside the picture
