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
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from helpers import randomize_adapters, tiny_batch, tiny_model
from safetensors.torch import load_file, save_file

from pal_adapters import AdapterConfig, MultiTaskModel, TaskConfig, add_pal
from pal_adapters.io import AdapterLoadError, backbone_state, file_sha256
from pal_adapters.save_format import CONTENT_KEY, content_sha256

TASKS = {"a": TaskConfig(num_labels=3), "b": TaskConfig(type="regression", pooling="mean"),
         "c": TaskConfig(type="token_classification", num_labels=4,
                         adapter=AdapterConfig(kind="low_rank", hidden_size=6, lhuc=True))}
ADAPTER = AdapterConfig(kind="pal", output_activation="gelu", hidden_size=8, num_heads=2)
WRONG_VALUES = [None, [], {}, "x", 2.5, -1, True, 10**12, float("nan")]
OUTCOMES = ("clear", "raw", "silent", "identical")


# ---- sources -----------------------------------------------------------------------------------
def source_model(tuned: bool, arch: str = "bert", seed: int = 0) -> MultiTaskModel:
    model = add_pal(tiny_model(arch, seed=seed), TASKS, adapter=ADAPTER, freeze_backbone=not tuned)
    randomize_adapters(model, seed=seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if tuned:  # stand-in for tuning: move the backbone away from its base weights
            for p in model.backbone.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def build_sources(root: Path) -> dict[str, Path]:
    """Undamaged saves: whole models and single tasks, plus task folders of other bases."""
    frozen, tuned = source_model(False), source_model(True)
    frozen.save_pretrained(root / "model_frozen")
    tuned.save_pretrained(root / "model_tuned")
    frozen.save_task(root / "task_frozen", "c")
    tuned.save_task(root / "task_tuned", "a")
    source_model(False, seed=5).save_pretrained(root / "other_seed")  # same shapes, other weights
    source_model(False, arch="roberta").save_pretrained(root / "other_roberta")
    return {p.name: p for p in root.iterdir()}


# ---- rehashing: every recorded sha256 recomputed from the files as they are ---------------------
def _reseal(path: Path, edit=None) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    if edit is not None:
        edit(data)
    if CONTENT_KEY in data:
        data[CONTENT_KEY] = content_sha256(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _fresh_hashes(folder: Path):
    def edit(data: dict) -> None:
        if isinstance(data.get("sha256"), dict):
            for key in data["sha256"]:
                if (folder / key).is_file():
                    data["sha256"][key] = file_sha256(folder / key)
    return edit


def rehash(directory: Path) -> None:
    """Recompute every file hash and content hash a save records (task files first, then the config)."""
    directory = Path(directory)
    tasks = [p for p in (directory / "tasks").iterdir() if p.is_dir()] if (directory / "tasks").is_dir() else []
    for folder in [*tasks, directory]:
        if (folder / "task.json").is_file():
            _reseal(folder / "task.json", _fresh_hashes(folder))
    if (directory / "pal_config.json").is_file():
        _reseal(directory / "pal_config.json", _fresh_hashes(directory))


# ---- damage ------------------------------------------------------------------------------------
def _files(d: Path, suffix: str) -> list[Path]:
    return sorted(p for p in d.rglob(f"*{suffix}") if p.is_file())


def _flip(path: Path, lo: int, hi: int, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(lo, max(lo + 1, min(hi, len(data))))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _header_len(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def truncate(d, rng):
    path = rng.choice(_files(d, ".json") + _files(d, ".safetensors"))
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])


def flip_header(d, rng):
    path = rng.choice(_files(d, ".safetensors"))
    _flip(path, 0, _header_len(path), rng)


def flip_data(d, rng):
    path = rng.choice(_files(d, ".safetensors"))
    _flip(path, _header_len(path), len(path.read_bytes()), rng)


def flip_json(d, rng):
    path = rng.choice(_files(d, ".json"))
    _flip(path, 0, len(path.read_bytes()), rng)


def _paths(node, prefix=()):
    """Every (container, key) in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield node, k
        yield from _paths(v, (*prefix, k))


def _edit_json(d, rng, change):
    path = rng.choice(_files(d, ".json"))
    data = json.loads(path.read_text())
    candidates = [(c, k) for c, k in _paths(data) if k != CONTENT_KEY]
    change(*rng.choice(candidates), rng)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _other_value(v, rng):
    choices = {"gelu": "identity", "identity": "gelu", "cls": "mean", "mean": "cls", "pal": "low_rank",
               "low_rank": "pal", "parallel": "serial", "serial": "parallel", "classification": "multi_label",
               "regression": "classification", "token_classification": "classification"}
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + rng.choice([1, -1]) if isinstance(v, int) else v * 2
    if isinstance(v, str):
        return choices.get(v, v + "x")
    if isinstance(v, list):
        return v[::-1] if len(v) > 1 else v + v
    return 0 if v is None else {}


def json_value(d, rng):
    def change(c, k, rng):
        c[k] = _other_value(c[k], rng)
    _edit_json(d, rng, change)


def json_type(d, rng):
    def change(c, k, rng):
        c[k] = rng.choice(WRONG_VALUES)
    _edit_json(d, rng, change)


def json_missing(d, rng):
    def change(c, k, rng):
        if isinstance(c, dict):
            del c[k]
        else:
            c.pop(k)
    _edit_json(d, rng, change)


def json_extra(d, rng):
    def change(c, k, rng):
        target = c[k] if isinstance(c[k], dict) else c if isinstance(c, dict) else None
        if target is None:
            c.append("extra")
        else:
            target["unexpected_field"] = rng.choice(WRONG_VALUES[2:])
    _edit_json(d, rng, change)


def version_bump(d, rng):
    value = rng.choice([3, 99, 1, "2", 0, True, None, 2.0])
    for path in _files(d, ".json"):
        data = json.loads(path.read_text())
        data["version"] = value
        path.write_text(json.dumps(data))


def _rewrite_tensors(path: Path, edit, metadata=None) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def relabel_dtype(d, rng):
    """An F32 tensor's header says I32 (same bytes, other meaning)."""
    path = rng.choice(_files(d, ".safetensors"))
    n = _header_len(path)
    data = path.read_bytes()
    header = data[:n].replace(b'"F32"', b'"I32"', 1)
    path.write_bytes(header + data[n:])


def stored_f16(d, rng):
    path = rng.choice(_files(d, ".safetensors"))
    name = rng.choice(sorted(load_file(str(path))))
    _rewrite_tensors(path, lambda t: t.update({name: t[name].half()}), {"aliases": "{}"})


def aliases(d, rng):
    path = rng.choice(_files(d, ".safetensors"))
    names = sorted(load_file(str(path)))
    kind = rng.choice(["overwrite", "missing", "garbage", "chain"])
    value = {"overwrite": {rng.choice(names): rng.choice(names)}, "missing": {"head.extra": "nowhere"},
             "garbage": "not json", "chain": {"x.y": "x.z"}}[kind]
    _rewrite_tensors(path, lambda t: None, {"aliases": value if isinstance(value, str) else json.dumps(value)})


def swap_tasks(d, rng):
    a, b = rng.sample(sorted((d / "tasks").iterdir()), 2)
    tmp = a.with_name(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def task_order(d, rng):
    path = d / "pal_config.json"
    data = json.loads(path.read_text())
    order = data["task_order"]
    data["task_order"] = rng.choice([order[:-1], [*order, "zz"], [order[0], *order], [*order[:-1], "zz"]])
    path.write_text(json.dumps(data))


def task_reorder(d, rng):
    """Another order of the same tasks: a valid save once rehashed, so raw only."""
    path = d / "pal_config.json"
    data = json.loads(path.read_text())
    data["task_order"] = data["task_order"][::-1]
    path.write_text(json.dumps(data))


def flip_tuned(d, rng):
    path = d / "pal_config.json"
    data = json.loads(path.read_text())
    data["backbone_tuned"] = not data["backbone_tuned"]
    path.write_text(json.dumps(data))


def other_base(d, rng, sources, save):
    """A task folder from another base (same shapes / RoBERTa) or from the frozen/tuned twin of ``save``."""
    twin = "model_frozen" if "tuned" in save else "model_tuned"
    donor = sources[rng.choice(["other_seed", "other_roberta", twin])]
    name = rng.choice(sorted(TASKS))
    target = d / "tasks" / name if (d / "tasks").is_dir() else d
    shutil.rmtree(target)
    shutil.copytree(donor / "tasks" / name, target)


def missing_file(d, rng):
    rng.choice(_files(d, ".json") + _files(d, ".safetensors")).unlink()


# kind -> (function, modes, applies to task saves)
DAMAGE = {
    "truncate": (truncate, ("raw", "rehashed"), True), "flip_header": (flip_header, ("raw", "rehashed"), True),
    "flip_data": (flip_data, ("raw",), True), "flip_json": (flip_json, ("raw",), True),
    "json_value": (json_value, ("raw",), True), "json_type": (json_type, ("raw", "rehashed"), True),
    "json_missing": (json_missing, ("raw", "rehashed"), True), "json_extra": (json_extra, ("raw", "rehashed"), True),
    "version": (version_bump, ("raw", "rehashed"), True), "relabel_dtype": (relabel_dtype, ("raw", "rehashed"), True),
    "stored_f16": (stored_f16, ("raw", "rehashed"), True), "aliases": (aliases, ("raw", "rehashed"), True),
    "swap_tasks": (swap_tasks, ("raw", "rehashed"), False), "task_order": (task_order, ("raw", "rehashed"), False),
    "task_reorder": (task_reorder, ("raw",), False),
    "flip_tuned": (flip_tuned, ("raw", "rehashed"), False), "other_base": (other_base, ("raw", "rehashed"), True),
    "missing_file": (missing_file, ("raw",), True),
}
SAVES = ("model_frozen", "model_tuned", "task_frozen", "task_tuned")


def plan(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    """``n`` cases (save, damage kind, mode, case seed), cycling through every combination."""
    combos = [(s, k, m) for s in SAVES for k, (_, modes, on_tasks) in DAMAGE.items() for m in modes
              if on_tasks or s.startswith("model")]
    rng = random.Random(seed)
    return [(*combos[i % len(combos)], rng.randrange(2**31)) for i in range(n)]


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
            (model, name), names = loaded, [loaded[1]]
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
