"""The GLUE accuracy table, summary JSON and plot, from the cached per-configuration results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common import format_table, write_json

COLUMNS = (("cola", "CoLA mcc"), ("sst2", "SST-2 acc"), ("mrpc", "MRPC F1/acc"), ("stsb", "STS-B P/S"),
           ("rte", "RTE acc"))


def task_score(metrics: dict[str, float]) -> float:
    """A task's GLUE score: the mean of its metrics (NaN counts as 0), x100."""
    values = [0.0 if math.isnan(v) else v for v in metrics.values()]
    return 100 * sum(values) / len(values)


def average(metrics: dict[str, dict[str, float]]) -> float:
    return sum(task_score(m) for m in metrics.values()) / len(metrics)


def _cell(metrics: dict[str, dict[str, float]], task: str) -> str:
    if task not in metrics:
        return "-"
    return "/".join(f"{100 * v:.1f}" for v in metrics[task].values())


def table(results: list[dict[str, Any]]) -> str:
    header = ["config", "params", *(c for _, c in COLUMNS), "avg final", "avg best", "minutes"]
    rows = []
    for r in results:
        rows.append([r["name"], f"{r['parameter_multiple']:.2f}x", *(_cell(r["final"], t) for t, _ in COLUMNS),
                     f"{average(r['final']):.1f}", f"{average(r['best']):.1f}", f"{r['wall_s'] / 60:.1f}"])
    return format_table(header, rows)


def load(out_dir: Path) -> list[dict[str, Any]]:
    results = []
    for path in sorted(out_dir.glob("*.json")):
        r = json.loads(path.read_text())
        r["name"] = path.stem
        results.append(r)
    return results


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(results) + 2), 4.5))
    x = range(len(results))
    ax.bar(x, [average(r["final"]) for r in results], color="#9db4d0", label="average (final)")
    ax.scatter(x, [average(r["best"]) for r in results], marker="_", s=300, color="black",
               label="average (best on dev, optimistic)", zorder=3)
    markers = dict(zip([t for t, _ in COLUMNS], "o^sDv", strict=True))
    for task, marker in markers.items():
        pts = [(i, task_score(r["final"][task])) for i, r in enumerate(results) if task in r["final"]]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, s=28, label=task, zorder=4)
    ax.set_xticks(list(x), [r["name"].replace("__", "\n") for r in results], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("dev score (x100)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: markers go below 0
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distillation(results: list[dict[str, Any]], kd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """MT-DNN-KD side by side for the distilled configuration ``kd``, per task and on average: its
    teachers (mean of their seeds' final scores), (a), (c) and (c) + KD."""
    others = {"(a)": _twin(results, kd, "a_single_ft", adapters=False), "(c)": _twin(results, kd, "c_pal")}
    tasks = [t for t, _ in COLUMNS if t in kd["final"]]
    rows, data = [], {}
    for task in tasks:
        teachers = [task_score(run["final"][task]) for run in kd["teachers"][task]]
        row = {"teachers": teachers, "teachers_mean": sum(teachers) / len(teachers),
               **{k: task_score(r["final"][task]) for k, r in others.items() if r and task in r["final"]},
               "(c)+KD": task_score(kd["final"][task])}
        data[task] = row
    columns = ["teachers_mean", "(a)", "(c)", "(c)+KD"]
    for task, row in data.items():
        rows.append([task, f"{len(row['teachers'])}", *(f"{row[c]:.1f}" if c in row else "-" for c in columns),
                     f"{row['(c)+KD'] - row['(c)']:+.1f}" if "(c)" in row else "-"])
    means = {c: sum(row[c] for row in data.values()) / len(data) for c in columns if all(c in r for r in data.values())}
    rows.append(["average", "", *(f"{means[c]:.1f}" if c in means else "-" for c in columns),
                 f"{means['(c)+KD'] - means['(c)']:+.1f}" if "(c)" in means else "-"])
    text = format_table(["task", "teachers", "teachers' mean", "(a)", "(c)", "(c) + KD", "KD - (c)"], rows)
    return text, {"config": kd["name"], "per_task": data, "average": means}


def _twin(results: list[dict[str, Any]], kd: dict[str, Any], config: str, adapters: bool = True):
    """The cached ``config`` run with the distilled run's tasks and overrides (adapter overrides
    ignored for a configuration without adapters), or None."""
    def key(r: dict[str, Any]) -> tuple:
        overrides = dict(r.get("overrides") or {})
        if not adapters:
            overrides.pop("adapter", None)
        return r.get("tasks"), overrides

    return next((r for r in results if r["config"] == config and key(r) == key(kd)), None)


def loss_weights(results: list[dict[str, Any]], path: Path) -> list[str]:
    """Plot sigma_t = exp(s_t / 2) = weight^(-1/2) over training for every configuration whose loss
    weights moved (uncertainty weighting); the names plotted."""
    runs = [(r["name"], r["runs"]["all"]["train_log"]) for r in results
            if "all" in r.get("runs", {}) and any(e.get("weight") not in (None, 1.0)
                                                  for e in r["runs"]["all"].get("train_log", []))]
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (name, log) in zip(axes[0], runs, strict=True):
        for task in dict.fromkeys(e["task"] for e in log):
            points = [(e["step"], e["weight"] ** -0.5) for e in log if e["task"] == task and e.get("weight")]
            ax.plot(*zip(*points, strict=True), marker=".", label=task)
        ax.set_xlabel("step")
        ax.set_ylabel("sigma_t = exp(s_t / 2)")
        ax.set_title(f"{name}: learnt task uncertainties (loss x exp(-s_t) + s_t)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [name for name, _ in runs]


def report(out_dir: Path, profile: str, metadata: dict[str, Any]) -> None:
    """Print the table of every cached configuration of ``profile``; write its JSON and PNG."""
    results = load(out_dir)
    if not results:
        print(f"no cached results in {out_dir}")
        return
    text = table(results)
    print(f"\nGLUE dev, profile {profile} (final metrics; 'avg best' picks the best evaluation on dev itself)\n"
          + text)
    summary = {**metadata, "profile": profile, "table": text.splitlines(),
               "results": {r["name"]: {k: r[k] for k in ("label", "final", "best", "parameter_multiple", "wall_s",
                                                        "budget", "overrides")} for r in results}}
    summary["distillation"] = {}
    for kd in (r for r in results if r.get("teachers")):
        text, data = distillation(results, kd)
        print(f"\nMT-DNN-KD, profile {profile}, {kd['name']}: {kd['label']} (task scores x100, final)\n{text}")
        summary["distillation"][kd["name"]] = {"table": text.splitlines(), **data}
    summary["loss_weights_plot"] = loss_weights(results, out_dir.parent / f"{profile}_uncertainty.png")
    write_json(out_dir.parent / f"{profile}.json", summary)
    plot(results, out_dir.parent / f"{profile}.png", f"GLUE dev (MiniLM), profile {profile}")
