"""Run records: a JSONL log, training-curve plots and an evaluation table.

Records are flat dicts, one JSON object per line. The training loop writes two kinds:

- ``{"kind": "train", "step": int, "task": str, "loss": float, "weight": float, ...}`` (``weight``: the
  task loss's multiplier, ``exp(-s_t)`` under uncertainty weighting)
- ``{"kind": "eval", "step": int, "metrics": {task: {metric: value}}, "score": float, ...}``

Floats keep 6 significant digits; non-finite values are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file

SIGNIFICANT_DIGITS = 6
LEGEND_COLUMNS = 3  # legend entries per row, below each panel


class JsonlLogger:
    """Appends one JSON line per ``log`` call and flushes it, so a killed run loses at most one line.

    A partial last line left by a run killed mid-write is cut off when the logger opens the file,
    so appended records never join onto it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_tail(self.path)

    def log(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(to_jsonable(dict(record)), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


def _drop_partial_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (a no-op when it ends with one or does not exist)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Keep the records of ``path`` up to ``step`` (inclusive), atomically, lines unchanged.

    A run resumed from a checkpoint at ``step`` logs the steps after it again: cutting what a killed
    run logged past its checkpoint keeps each step in the log once (``step=0``: an empty log).
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # blank, or the half line of a killed write
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    with atomic_file(path, "w") as f:
        f.write("".join(kept))


def to_jsonable(value: Any) -> Any:
    """Python/JSON values from tensors, numpy values, paths and containers; floats rounded."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()  # a 0-d tensor gives a Python number
    elif isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot log a value of type {type(value).__name__}: {value!r}")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file; a last line cut short by a killed run is ignored.

    Blank lines are skipped; an invalid line anywhere else raises ``ValueError`` with its number.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: the write was interrupted
                break
            raise ValueError(f"{str(path)!r}, line {number}: invalid JSON ({e.msg})") from None
    return records


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start): ``(n,) -> (n,)``."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    x = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(x, 0, 0.0))
    ends = np.arange(1, len(x) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _train_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """task -> (steps, losses) sorted by step, from ``kind == "train"`` records."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "train" and r.get("loss") is not None:
            points[str(r.get("task", "all"))].append((r["step"], r["loss"]))
    return {task: tuple(np.array(c, dtype=np.float64) for c in zip(*sorted(p), strict=True))
            for task, p in points.items()}


def _eval_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``"task.metric"`` (and ``"score"``) -> (steps, values) from ``kind == "eval"`` records."""
    series: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["step"]):
        values = {f"{t}.{m}": v for t, ms in r.get("metrics", {}).items() for m, v in ms.items()}
        if r.get("score") is not None:
            values["score"] = r["score"]
        for name, value in values.items():
            series[name][0].append(r["step"])
            series[name][1].append(math.nan if value is None else value)
    return dict(series)


def _task_colours(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One matplotlib colour per task, over every task that has a loss or a dev metric (sorted), so a
    task's loss curve and its metrics share a colour even when some tasks only train or only evaluate."""
    tasks = {str(r.get("task", "all")) for r in records if r.get("kind") == "train"}
    tasks |= {t for r in records if r.get("kind") == "eval" for t in r.get("metrics", {})}
    return {task: f"C{i % 10}" for i, task in enumerate(sorted(tasks))}


def _plot_train(ax: Any, records: Sequence[Mapping[str, Any]], window: int | None, colours: dict[str, str]) -> None:
    series = _train_series(records)
    for task, (steps, losses) in sorted(series.items()):
        w = window or max(1, min(50, len(losses) // 10))
        ax.plot(steps, losses, color=colours[task], alpha=0.2, linewidth=0.8)
        ax.plot(steps, moving_average(losses, w), color=colours[task], label=f"{task} (avg {w})")
    _finish(ax, "training loss", "loss", bool(series))


def _plot_eval(ax: Any, records: Sequence[Mapping[str, Any]], colours: dict[str, str]) -> None:
    series = _eval_series(records)
    score = series.pop("score", None)
    metrics_drawn: Counter[str] = Counter()  # a task's metrics share its colour and differ by line style
    for name, (steps, values) in sorted(series.items()):
        task = name.rsplit(".", 1)[0]  # "task.metric"; metric names have no dot
        style = ("-", "--", ":", "-.")[metrics_drawn[task] % 4]
        metrics_drawn[task] += 1
        ax.plot(steps, values, color=colours[task], linestyle=style, marker="o", markersize=3, label=name)
    twin = None
    if score is not None:  # the sum over tasks exceeds the metrics' range: own axis
        twin = ax.twinx()
        twin.plot(*score, color="black", linestyle="--", marker="s", markersize=3, label="score")
        twin.set_ylabel("score")
    _finish(ax, "dev metrics", "metric", bool(series) or score is not None, also=twin)


def _finish(ax: Any, title: str, ylabel: str, has_data: bool, also: Any = None) -> None:
    """Title and labels; one legend for ``ax`` and its twin ``also``, below the axes (never over the lines)."""
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if not has_data:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        return
    handles, labels = ax.get_legend_handles_labels()
    if also is not None:
        more = also.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=LEGEND_COLUMNS,
              fontsize="small", frameon=False)
    ax.grid(alpha=0.3)


def plot_training_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         window: int | None = None) -> Path:
    """A PNG: training loss per task (raw, faint, and a trailing moving average of ``window``
    records, by default a tenth of each task's records up to 50) and dev metrics per task vs step.

    Uses matplotlib's Agg canvas without pyplot (no global state, no display). Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = training_curves_figure(records, window)
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return path


def training_curves_figure(records: Sequence[Mapping[str, Any]], window: int | None = None) -> Any:
    """The matplotlib ``Figure`` of ``plot_training_curves``: loss and dev-metric panels, each with
    its legend below it (constrained layout leaves them room)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6), layout="constrained")
    left, right = fig.subplots(1, 2)
    colours = _task_colours(records)
    _plot_train(left, records, window, colours)
    _plot_eval(right, records, colours)
    return fig


def format_eval_table(results: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """A fixed-width table, one row per task, one column per metric (``-`` where a task lacks it)."""
    metrics = list(dict.fromkeys(m for task_results in results.values() for m in task_results))
    header = ["task", *metrics]
    rows = [[task, *(_cell(r.get(m), digits) for m in metrics)] for task, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _cell(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{float(value):.{digits}f}"
