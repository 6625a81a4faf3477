"""Fuzz of saved models: damage saves every way a file can go wrong, load each, tally what happened.

    python tests/fuzz_saves.py --n 600 [--seed 0] [--json benchmarks/results/fuzz_saves.json]

Sources: tiny BERTs with non-trivial adapters and heads, saved whole (frozen and tuned backbone)
and per task (frozen and tuned). Damage: truncations; bit flips in safetensors headers, tensor
data and JSON; JSON values edited, set to wrong types, deleted, added; task folders swapped;
``task_order`` and ``backbone_tuned`` edited; tensors relabelled (F32 as I32) or stored as F16;
``aliases`` metadata that overwrites or points nowhere; task folders from another base (same
shapes, a RoBERTa of the same sizes, a frozen model's task in a tuned model); format versions.
Most kinds run twice: ``raw`` (recorded hashes left as they are) and ``rehashed`` (every recorded
sha256 recomputed, as a tool that knows the format would), so the checks behind the hashes are
exercised too; damage that makes a different but valid save (a value edit, a data bit flip) runs
raw only.

Outcomes: ``clear`` (AdapterLoadError), ``raw`` (any other exception), ``silent`` (loaded, but the
logits or task order differ from the undamaged save's, or, for raw damage, a task definition),
``identical`` (loaded, same outputs: harmless damage, or a rehashed edit to another valid value
that does not change outputs, such as ``init_std``). ``changed``: a failed load that left the
model (or the backbone passed to from_pretrained) different from before.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from fuzz_damage import DAMAGE, SAVES, TASKS, build_sources, other_base, plan, rehash, source_model
from helpers import randomize_adapters, tiny_batch, tiny_model

from pal_adapters import MultiTaskModel, add_pal
from pal_adapters.io import AdapterLoadError, backbone_state

__all__ = ["TASKS", "rehash", "run_fuzz", "same_snapshot", "snapshot", "source_model"]
OUTCOMES = ("clear", "raw", "silent", "identical")


# ---- loading and judging -------------------------------------------------------------------------
def snapshot(module: torch.nn.Module, run) -> tuple:
    """Everything a failed load must leave as it was: weights, hooks, modules, flags, outputs."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
    grads = {n: p.requires_grad for n, p in module.named_parameters()}
    with torch.no_grad():
        out = run()
    return state, hooks, [n for n, _ in module.named_modules()], grads, module.training, out


def same_snapshot(a: tuple, b: tuple) -> bool:
    (sa, *ra, oa), (sb, *rb, ob) = a, b
    return (ra == rb and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            and torch.equal(oa, ob))


class Loader:
    """Loads a save the way its kind is loaded, into a fresh target, and describes the result."""

    def __init__(self, sources: dict[str, Path]):
        self.batch = tiny_batch()
        self.tuned_backbone = backbone_state(MultiTaskModel.from_pretrained(
            sources["model_tuned"], backbone=tiny_model("bert")).backbone)
        self.refs = {save: self.load(save, sources[save])[2]() for save in SAVES}

    def target(self, save: str):
        """(module whose state a failed load must keep, a forward of it, the load of a folder)."""
        if save.startswith("model"):
            backbone = tiny_model("bert")
            return (backbone, lambda: backbone(**self.batch).last_hidden_state,
                    lambda d: MultiTaskModel.from_pretrained(d, backbone=backbone))
        model = add_pal(tiny_model("bert"), {"x": 2}, adapter="low_rank")
        if save == "task_tuned":
            model.backbone.load_state_dict(self.tuned_backbone, strict=False)
        randomize_adapters(model)
        model.eval()
        return model, lambda: model(**self.batch, task="x").logits, lambda d: (model, model.load_task(d))

    def load(self, save: str, folder: Path):
        module, run, load = self.target(save)
        before = snapshot(module, run)
        loaded = load(folder)
        return module, run, lambda: self.describe(save, loaded), before

    def describe(self, save: str, loaded) -> tuple:
        """What the loaded model computes: task order, definitions and every task's logits."""
        if save.startswith("model"):
            model, names = loaded.eval(), loaded.task_names
        else:
            model, names = loaded[0], [loaded[1]]
            model.eval()
        with torch.no_grad():
            logits = [model(**self.batch, task=t).logits for t in names]
        return [model.tasks[t] for t in names], logits, (names if save.startswith("model") else None)

    @staticmethod
    def same(a: tuple, b: tuple, definitions: bool) -> bool:
        """Same task order and logits (and, with ``definitions``, the same task definitions)."""
        return (a[0] == b[0] or not definitions) and a[2] == b[2] and len(a[1]) == len(b[1]) and all(
            torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))


def run_case(case: tuple, sources: dict[str, Path], loader: Loader, work: Path) -> tuple[str, bool, str]:
    """(outcome, whether a failed load changed the target, message)."""
    save, kind, mode, seed = case
    folder = work / "case"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(sources[save], folder)
    damage = DAMAGE[kind][0]
    rng = random.Random(seed)
    damage(folder, rng, sources, save) if damage is other_base else damage(folder, rng)
    if mode == "rehashed":
        rehash(folder)
    module, run, load = loader.target(save)
    before = snapshot(module, run)
    try:
        loaded = load(folder)
    except AdapterLoadError as err:
        return "clear", not same_snapshot(before, snapshot(module, run)), str(err)
    except Exception as err:  # noqa: BLE001 - a raw error is what the fuzz counts
        return "raw", not same_snapshot(before, snapshot(module, run)), f"{type(err).__name__}: {err}"
    # Rehashed damage that leaves a valid value (init_std: 2.5) is an edit, not damage: outputs decide.
    same = Loader.same(loader.describe(save, loaded), loader.refs[save], definitions=mode == "raw")
    return ("identical" if same else "silent"), False, ""


def run_fuzz(n: int, seed: int = 0, progress: bool = False) -> dict:
    """Run ``n`` cases; returns the tally (totals, per kind and mode) and examples of bad outcomes."""
    cases = plan(n, seed)
    totals, per_kind, bad = Counter(), {}, []
    with tempfile.TemporaryDirectory() as tmp:
        sources = build_sources(Path(tmp) / "sources")
        loader = Loader(sources)
        iterator = cases
        if progress:
            from tqdm import tqdm
            iterator = tqdm(cases, desc="damaged saves", unit="case")
        for case in iterator:
            outcome, changed, message = run_case(case, sources, loader, Path(tmp))
            totals[outcome] += 1
            totals["changed"] += changed
            row = per_kind.setdefault(f"{case[1]}/{case[2]}", Counter())
            row[outcome] += 1
            row["changed"] += changed
            if outcome in ("raw", "silent") or changed:
                bad.append({"case": list(case), "outcome": outcome, "changed": changed, "message": message[:300]})
    return {"cases": n, "seed": seed, "totals": dict(totals), "per_kind": {k: dict(v) for k, v in per_kind.items()},
            "bad": bad}


def format_table(result: dict) -> str:
    cols = (*OUTCOMES, "changed")
    lines = [f"{'damage/mode':28s}" + "".join(f"{c:>10s}" for c in cols)]
    for kind, row in sorted(result["per_kind"].items()):
        lines.append(f"{kind:28s}" + "".join(f"{row.get(c, 0):>10d}" for c in cols))
    lines.append(f"{'TOTAL':28s}" + "".join(f"{result['totals'].get(c, 0):>10d}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="damaged saves to load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the tally (with command, versions, date) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_fuzz(args.n, args.seed, progress=True)
    print(format_table(result))
    for example in result["bad"][:20]:
        print("BAD", example)
    if args.json:
        import datetime
        import platform

        import transformers

        result.update(command="python tests/fuzz_saves.py " + " ".join(argv or sys.argv[1:]),
                      date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      machine=platform.platform(), torch=torch.__version__, transformers=transformers.__version__)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bad = result["totals"].get("raw", 0) + result["totals"].get("silent", 0) + result["totals"].get("changed", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
