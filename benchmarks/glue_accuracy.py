"""Accuracy on real GLUE: plain fine-tuning, heads only, PALs, low-rank, frozen PALs vs PEFT LoRA.

    python benchmarks/glue_accuracy.py --quick                       # every configuration, a few minutes
    python benchmarks/glue_accuracy.py --profile medium --configs a_single_ft c_pal e_pal_frozen e_lora_frozen
    python benchmarks/glue_accuracy.py --profile full                # resumes: cached configurations are kept
    python benchmarks/glue_accuracy.py --profile medium --configs c_pal --tasks cola --task-set pooling=mean

Packaged MiniLM (all-MiniLM-L6-v2), GLUE TSVs in ``../shared/data/glue``, tasks CoLA, SST-2, MRPC,
STS-B and RTE, dev sets scored in full. The full budget is 3 epochs of every task (SST-2: one
epoch of 20,000 training examples) at batch 32, length 128: 802 + 625 + 345 + 540 + 234 = 2,546
steps, the steps a single-task model of (a) gets on its task and the multi-task models get in
all. ``--profile medium`` takes 1/6 of those steps; ``--quick`` 4 steps per task on 64 dev
examples (a check of the machinery, not a measurement). Backbone lr 5e-5; adapters, heads and
LoRA 1e-3; warm-up 10%, linear decay, AdamW.

Each configuration is cached in ``benchmarks/results/glue_accuracy/<profile>/<config>.json``
(``--force`` reruns it), so the set can be completed over several runs. Every run prints the
table of whatever is cached, and writes ``<profile>.json`` and ``<profile>.png`` next to it.
The average is GLUE's: each task's mean metric (MRPC F1/acc, STS-B Pearson/Spearman), then the
mean over tasks, x100. "best" is the evaluation with the best score on the dev set itself:
optimistic, reported apart from "final".
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, run_metadata, write_json  # noqa: E402
from glue_data import TASKS, build_factories, load_defs, steps_per_task  # noqa: E402
from glue_report import average, report
from glue_runs import Budget, lora_params_per_rank, train_lora, train_with_package  # noqa: E402

from pal_adapters.cli_run import parse_override  # noqa: E402
from pal_adapters.config import PRESETS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much of the full budget a run gets: a fraction of its steps (or fixed steps per task)."""

    fraction: float = 1.0
    fixed_steps: int = 0
    evals: int = 4
    max_eval_examples: int = 0
    max_train_examples: int = 20_000  # caps SST-2 only, unless a profile asks for less
    model: str = "minilm"


PROFILES = {
    "smoke": Profile(fixed_steps=2, evals=1, model="tiny"),
    "quick": Profile(fixed_steps=4, evals=1, max_eval_examples=64, max_train_examples=1000),
    "probe": Profile(fixed_steps=200, evals=2),  # the investigation's short runs (one task at a time)
    "medium": Profile(fraction=1 / 6, evals=2),
    "full": Profile(fraction=1.0, evals=4),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """One row of the table: ``mode`` single (one model per task), multi (one model) or lora."""

    label: str
    mode: str
    adapters: bool = True
    train: tuple[tuple[str, Any], ...] = ()
    distill: str = ""  # MT-DNN-KD: soft targets from teachers of this recipe (glue_teachers.RECIPES)


TUNED = (("freeze_backbone", False),)
CONFIGS = {
    "a_single_ft": Setup("(a) single-task full fine-tuning", "single", False, TUNED),
    "b_heads_only": Setup("(b) multi-task, heads only", "multi", False, TUNED),
    "c_pal": Setup("(c) multi-task PAL, all layers, annealed", "multi", True, TUNED + (("adapter", "pal"),)),
    "d_low_rank": Setup("(d) multi-task low-rank, all layers", "multi", True, TUNED + (("adapter", "low_rank"),)),
    "e_pal_frozen": Setup("(e) frozen backbone, PAL per task", "single", True,
                          (("freeze_backbone", True), ("adapter", "pal"))),
    "e_lora_frozen": Setup("(e) frozen backbone, PEFT LoRA per task", "lora"),
    "c_proportional": Setup("(c) with proportional sampling", "multi", True,
                            TUNED + (("adapter", "pal"), ("sampling", "proportional"))),
    "c_sqrt": Setup("(c) with sqrt sampling", "multi", True, TUNED + (("adapter", "pal"), ("sampling", "sqrt"))),
    "c_serial": Setup("(c) with serial PALs", "multi", True,
                      TUNED + (("adapter", {**PRESETS["pal"].to_dict(), "placement": "serial"}),)),
    "c_top_half": Setup("(c) with PALs in the top half", "multi", True, TUNED + (("adapter", "pal_top_half"),)),
    # PALs §3.2: the encoder's layers untouched, a task-specific function on top (paper: 81.5 at 1.66x / 1.10x).
    "f_top_layer": Setup("(f) multi-task, BERT layer on top", "multi", True, TUNED + (("adapter", "top_layer"),)),
    "g_top_attention": Setup("(g) multi-task, projected attention on top", "multi", True,
                             TUNED + (("adapter", "top_attention"),)),
    # MT-DNN-KD: (c) trained on its teachers' averaged class probabilities only (alpha 1)
    "c_pal_kd": Setup("(c) + MT-DNN-KD from (a) teachers", "multi", True, TUNED + (("adapter", "pal"),), "single"),
    "c_pal_kd_mt": Setup("(c) + MT-DNN-KD from (c) fine-tuned per task (the paper's teachers)", "multi", True,
                         TUNED + (("adapter", "pal"),), "multi"),
    "c_uncertainty": Setup("(c) with uncertainty loss weighting", "multi", True,
                           TUNED + (("adapter", "pal"), ("loss_weighting", "uncertainty"))),
}


def run_setup(name: str, setup: Setup, defs: dict, budget: Budget, factories, work: Path,
              adapter_set: dict[str, Any], where: tuple[str, Path, Path]) -> dict[str, Any]:
    """Train one configuration; per-task final/best metrics, wall time, parameter counts.
    ``where``: (profile, results folder, cache folder), where a distilled configuration's teachers are kept."""
    backbone, seq_cls = factories
    train = dict(setup.train)
    if adapter_set and "adapter" in train:
        base = train["adapter"]
        train["adapter"] = {**(PRESETS[base].to_dict() if isinstance(base, str) else base), **adapter_set}
    teachers = {}
    if setup.distill:
        from glue_teachers import teacher_probabilities

        files, teachers = teacher_probabilities(setup.distill, defs, budget, backbone, work, *where)
        train["distill"] = {"probabilities": files, "alpha": 1.0}
    if setup.mode == "multi":
        run = train_with_package(defs, sum(budget.steps.values()), budget, backbone, work / name, train,
                                 setup.adapters)
        return {"runs": {"all": run}, **_merge([run], per_task=False)} | ({"teachers": teachers} if teachers else {})
    runs = {}
    for task, definition in defs.items():
        steps = budget.steps[task]
        if setup.mode == "single":
            runs[task] = train_with_package({task: definition}, steps, budget, backbone, work / f"{name}-{task}",
                                            train, setup.adapters)
        else:
            runs[task] = train_lora(task, definition, steps, budget, lora_rank(definition, seq_cls, backbone),
                                    backbone, seq_cls)
    return {"runs": runs, **_merge(list(runs.values()), per_task=True)}


_RANKS: dict[int, int] = {}


def lora_rank(definition, seq_cls, backbone) -> int:
    """The LoRA rank whose trainable parameters per task come closest to a PAL's (adapter + head)."""
    from pal_adapters import add_pal

    labels = definition.task.num_labels
    if labels not in _RANKS:
        net, _ = backbone()
        pal = add_pal(net, {"t": definition.task}, adapter="pal", freeze_backbone=True).parameter_report()
        per_rank, head = lora_params_per_rank(seq_cls, labels)
        _RANKS[labels] = max(1, round((pal.trainable - head) / per_rank))
    return _RANKS[labels]


def _merge(runs: list[dict[str, Any]], per_task: bool) -> dict[str, Any]:
    final, best = {}, {}
    for run in runs:
        final.update(run["final"])
        best.update(run["best"])
    return {"final": final, "best": best, "wall_s": sum(r["wall_s"] for r in runs),
            "added_params": sum(r["added_params"] for r in runs), "per_task_models": per_task}


def parameter_multiple(name: str, result: dict[str, Any], backbone_params: int, num_tasks: int) -> float:
    """Total parameters to serve every task / one backbone (tuned single-task models: one copy each)."""
    if CONFIGS[name].mode == "single" and not CONFIGS[name].adapters:
        return (num_tasks * backbone_params + result["added_params"]) / backbone_params
    return (backbone_params + result["added_params"]) / backbone_params


def cache_name(name: str, tasks: list[str], extra: dict[str, dict[str, Any]], steps: int = 0) -> str:
    """``<config>`` plus a readable suffix for every non-default choice (tasks, overrides)."""
    parts = [] if tasks == list(TASKS) else ["tasks=" + "+".join(tasks)]
    parts += [f"steps={steps}"] if steps else []
    parts += [f"{k}={v}" for group in extra.values() for k, v in sorted(group.items())]
    suffix = re.sub(r"[^A-Za-z0-9_.=+-]", "", "__".join(parts))
    return name + (f"__{suffix}" if suffix else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="medium")
    p.add_argument("--quick", action="store_const", const="quick", dest="profile", help="= --profile quick")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="profile",
                   help="tiny random model on synthetic data (tests)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--set", action="append", default=[], help="TrainConfig field=value (e.g. lr=1e-4)")
    p.add_argument("--task-set", action="append", default=[], help="TaskConfig field=value (e.g. pooling=mean)")
    p.add_argument("--adapter-set", action="append", default=[], help="AdapterConfig field=value")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    p.add_argument("--results-dir", default=str(RESULTS_DIR / "glue_accuracy"))
    p.add_argument("--teacher-cache", default=str(Path(__file__).resolve().parent / ".cache" / "glue_teachers"),
                   help="where c_pal_kd's teachers' probability files are kept (model outputs, not results)")
    p.add_argument("--steps", type=int, default=0, help="steps per task instead of the profile's")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="rerun configurations that are cached")
    p.add_argument("--report-only", action="store_true", help="print and plot the cached results only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    if args.steps:
        profile = dataclasses.replace(profile, fixed_steps=args.steps, fraction=0.0)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    extra = {"train": dict(parse_override(x) for x in args.set),
             "task": dict(parse_override(x) for x in args.task_set),
             "adapter": dict(parse_override(x) for x in args.adapter_set)}
    out_dir = Path(args.results_dir) / args.profile
    work = Path(tempfile.mkdtemp(prefix="glue_accuracy-"))
    defs, factories = None, None
    for name in [] if args.report_only else args.configs:
        path = out_dir / f"{cache_name(name, tasks, extra, args.steps)}.json"
        if path.is_file() and not args.force:
            print(f"{name}: cached in {path}")
            continue
        if defs is None:
            data_dir = make_smoke_data(work) if args.profile == "smoke" else args.data_dir
            defs = load_defs(data_dir, tasks, extra["task"])
            factories = build_factories(profile.model, work)
        budget = Budget(steps=steps_per_task(defs, profile.fraction, profile.fixed_steps),
                        max_eval_examples=profile.max_eval_examples, max_train_examples=profile.max_train_examples,
                        evals=profile.evals, seed=args.seed)
        budget = dataclasses.replace(budget, **{k: v for k, v in extra["train"].items()
                                                if k in ("lr", "adapter_lr")})
        setup = CONFIGS[name]
        if extra["train"]:
            setup = dataclasses.replace(setup, train=setup.train + tuple(
                (k, v) for k, v in extra["train"].items() if k not in ("lr", "adapter_lr")))
        print(f"\n=== {name}: {setup.label}; steps per task {budget.steps}", flush=True)
        start = time.perf_counter()
        result = run_setup(name, setup, defs, budget, factories, work, extra["adapter"],
                           (args.profile, Path(args.results_dir), Path(args.teacher_cache)))
        backbone_params = sum(p.numel() for p in factories[0]()[0].parameters())
        result.update(config=name, label=setup.label, profile=args.profile, tasks=tasks, overrides=extra,
                      budget=dataclasses.asdict(budget), backbone_params=backbone_params,
                      parameter_multiple=parameter_multiple(name, result, backbone_params, len(tasks)),
                      total_s=time.perf_counter() - start, **run_metadata(argv and ["glue_accuracy.py", *argv]))
        write_json(path, result)
        print(f"{name}: final average {average(result['final']):.1f}, written to {path}", flush=True)
    report(out_dir, args.profile, run_metadata(argv and ["glue_accuracy.py", *argv]))
    return 0


def make_smoke_data(root: Path) -> str:
    from glue_data import write_synthetic_glue

    return str(write_synthetic_glue(root / "glue"))


if __name__ == "__main__":
    raise SystemExit(main())
