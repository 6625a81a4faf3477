"""Damage for tests/fuzz_saves.py: the undamaged sources, every kind of damage, and ``rehash``.

A damage kind is a function ``(folder, rng)`` that changes a copy of a save in place; ``DAMAGE``
lists each with the modes it runs in (``raw``: recorded hashes left as they are; ``rehashed``:
every recorded sha256 recomputed afterwards, see ``rehash``) and whether it applies to
single-task saves.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import torch
from helpers import randomize_adapters, tiny_model
from safetensors.torch import load_file, save_file

from pal_adapters import AdapterConfig, MultiTaskModel, TaskConfig, add_pal
from pal_adapters.io import VERSION, file_sha256
from pal_adapters.save_format import CONTENT_KEY, content_sha256

TASKS = {"a": TaskConfig(num_labels=3), "b": TaskConfig(type="regression", pooling="mean"),
         "c": TaskConfig(type="token_classification", num_labels=4,
                         adapter=AdapterConfig(kind="low_rank", hidden_size=6, lhuc=True))}
ADAPTER = AdapterConfig(kind="pal", output_activation="gelu", hidden_size=8, num_heads=2)
WRONG_VALUES = [None, [], {}, "x", 2.5, -1, True, 10**12, float("nan")]


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
    value = rng.choice([VERSION + 1, 99, 1, str(VERSION), 0, True, None, float(VERSION)])
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


COMBOS = [(s, k, m) for s in SAVES for k, (_, modes, on_tasks) in DAMAGE.items() for m in modes
          if on_tasks or s.startswith("model")]  # (save, damage kind, mode): 110


def plan(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    """``n`` cases (save, damage kind, mode, case seed), cycling through every combination."""
    rng = random.Random(seed)
    return [(*COMBOS[i % len(COMBOS)], rng.randrange(2**31)) for i in range(n)]


