"""The NER/QA comparison table, summary JSON and curves, from one or more ``ner_qa_accuracy`` results.

Each part of ``ner_qa_accuracy.py`` (``ner_single``, ``qa_single``, ``multi``) can run as its own
process, into its own file; this merges them, refusing parts trained with different settings
(a comparison at unequal budgets would be a wrong answer), and writes the single-task against
multi-task table and a plot of every evaluation along the way (dev F1 against steps per task):

    python benchmarks/ner_qa_report.py ner_qa_accuracy.json ner_qa_accuracy_qa_single.json \\
        ner_qa_accuracy_multi.json --output ner_qa_accuracy_report.json

Relative names are read from (and written to) ``--results-dir`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, format_table, run_metadata, save_plot, write_json

SINGLE_PART = {"conll": "ner_single", "squad": "qa_single"}  # task -> the part that trains it alone
ROWS = (("CoNLL-2003 dev entity F1", "conll", "f1"),
        ("SQuAD F1, articles 38-47 (trained on 0-37)", "squad", "f1"),
        ("SQuAD EM, articles 38-47 (trained on 0-37)", "squad", "exact_match"))
NAMES = {"conll": "NER (CoNLL-2003)", "squad": "QA (SQuAD)"}
HEADER = ["metric", "single-task", "multi-task PAL", "multi - single"]


def metric(results: dict[str, Any], part: str, task: str, name: str) -> float | None:
    """``task``'s ``name`` at the last evaluation of ``part``, or None when that part is not there."""
    return results.get(part, {}).get("metrics", {}).get(task, {}).get(name)


def rows(results: dict[str, Any]) -> list[list[str]]:
    """One line per metric with a figure: single-task and multi-task (x100) and the gap."""
    lines = []
    for label, task, name in ROWS:
        single, multi = metric(results, SINGLE_PART[task], task, name), metric(results, "multi", task, name)
        if single is None and multi is None:
            continue
        cells = [f"{100 * v:.2f}" if v is not None else "-" for v in (single, multi)]
        gap = f"{100 * (multi - single):+.2f}" if single is not None and multi is not None else "-"
        lines.append([label, *cells, gap])
    return lines


def merge(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parts of several results files, each once; ``ValueError`` naming the files when two hold the
    same part or were trained with different settings (``steps`` is per task, so it must agree too)."""
    first, reference = next(iter(summaries.items()))
    parts: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, summary in summaries.items():
        ours, theirs = summary["settings"], reference["settings"]
        diff = [f"{k}={ours.get(k)!r} vs {theirs.get(k)!r}" for k in sorted(ours.keys() | theirs.keys())
                if ours.get(k) != theirs.get(k)]
        if diff:
            raise ValueError(f"{name} and {first} were trained with different settings ({', '.join(diff)}): "
                             "their figures are not comparable")
        for part, result in summary["results"].items():
            if part in parts:
                raise ValueError(f"part {part!r} is in both {origin[part]} and {name}; give one of them")
            parts[part], origin[part] = result, name
    return {"settings": reference["settings"], "results": parts, "sources": origin}


def curves(results: dict[str, Any], tasks: int) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{task: {part: [(steps per task, F1 x100), ...]}}`` for NER and QA: the multi-task run's steps
    are over all its ``tasks`` (round robin), so they are divided by ``tasks`` to compare."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for task, single in SINGLE_PART.items():
        for part, per in ((single, 1), ("multi", tasks)):
            points = [(e["step"] // per, 100 * e["metrics"][task]["f1"]) for e in results.get(part, {}).get("curve", [])
                      if task in e["metrics"]]
            if points:
                out.setdefault(task, {})[part] = points
    return out


def plot(lines: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    def draw(ax: Any) -> None:
        for (task, parts), colour in zip(lines.items(), ("tab:blue", "tab:orange"), strict=False):
            for part, points in parts.items():
                style = "--" if part == "multi" else "-"
                label = f"{NAMES[task]}, {'six-task PAL' if part == 'multi' else 'single-task'}"
                ax.plot(*zip(*points, strict=True), style, marker="o", color=colour, label=label)
        ax.set_xlabel("optimizer steps on the task")
        ax.set_ylabel("dev F1 x100")
        ax.set_title("CoNLL-2003 NER and SQuAD (MiniLM): alone vs in the six-task model")
        ax.grid(alpha=0.3)
        ax.legend()

    return save_plot(path, draw) if lines else None


def report(names: list[str], results_dir: Path, output: str) -> dict[str, Any]:
    """Merge ``names`` (relative ones under ``results_dir``), write the summary and plot, print the table."""
    merged = merge({n: json.loads((results_dir / n).read_text()) for n in names})
    tasks = len(merged["results"].get("multi", {}).get("tasks", [])) or 1
    lines = curves(merged["results"], tasks)
    picture = plot(lines, results_dir / (Path(output).stem + "_curves.png"))
    summary = {**run_metadata(), **merged, "table": rows(merged["results"]), "curves": lines,
               "plot": picture.name if picture else None}
    write_json(results_dir / output, summary)
    print(format_table(HEADER, summary["table"]))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="ner_qa_accuracy results files (names under --results-dir)")
    parser.add_argument("--output", default="ner_qa_accuracy_report.json")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    try:
        report(args.files, args.results_dir, args.output)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"ner_qa_report: {err}") from None


if __name__ == "__main__":
    main()
