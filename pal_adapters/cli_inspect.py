"""``pal-adapters inspect``: what a saved model folder or task folder holds, read from its files only.

Parameter counts come from the tensor shapes in the safetensors headers (no tensor is loaded and
no model is built); a tensor stored once for several names (shared weights) counts once, as in
``MultiTaskModel.parameter_report``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .adapters.methods import ADAPTER_METHODS
from .config import AdapterConfig
from .io import AdapterLoadError, file_sha256, read_json
from .saving import BACKBONE_FILE, CONFIG_FILE, TASK_FILE, TASK_TENSORS, verify_saved
from .tasks import TASK_KINDS


def tensor_counts(path: Path) -> dict[str, int]:
    """Elements per top-level name prefix (``adapter``, ``head``, ...) from the file's header."""
    if not path.is_file():
        raise AdapterLoadError(f"{path} does not exist")
    counts: dict[str, int] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                prefix = key.split(".", 1)[0] if key.startswith(("adapter.", "head.")) else "backbone"
                counts[prefix] = counts.get(prefix, 0) + math.prod(f.get_slice(key).get_shape())
    except (SafetensorError, OSError) as err:
        raise AdapterLoadError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from err
    return counts


def base_summary(base: dict[str, Any]) -> dict[str, Any]:
    keys = ("model_type", "hidden_size", "num_layers", "vocab_size", "name_or_path")
    return {**{k: base.get(k) for k in keys}, "checksum": str(base.get("checksum", ""))[:12]}


def adapter_summary(adapter: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Method, placement, adapted depths and d_s of an adapter config on its base."""
    try:
        config = AdapterConfig.from_dict(adapter)
        layers = list(config.resolved_layers(int(base["num_layers"])))
        shown = config.method.summary(config, int(base["hidden_size"]))  # d_s and the method's own fields
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"invalid adapter config {adapter!r}: {err}") from err
    return {"method": config.kind, "lhuc": config.uses_lhuc, "placement": config.placement, "layers": layers,
            **shown}


def describe_task(folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    meta = read_json(folder / TASK_FILE)
    task = meta.get("task") or {}
    counts = tensor_counts(folder / TASK_TENSORS)
    recorded = (meta.get("sha256") or {}).get(TASK_TENSORS)
    return {
        "name": meta.get("name", folder.name), "type": task.get("type"), "num_labels": task.get("num_labels"),
        "labels": task.get("labels"), "adapter": adapter_summary(meta.get("adapter") or {}, base),
        "parameters": {"adapter": counts.get("adapter", 0), "head": counts.get("head", 0)},
        "sha256_ok": recorded is None or file_sha256(folder / TASK_TENSORS) == recorded,
    }


def describe_model(folder: Path) -> dict[str, Any]:
    meta = read_json(folder / CONFIG_FILE)
    tasks = [describe_task(folder / "tasks" / name, meta["base"]) for name in meta.get("task_order", [])]
    tuned = bool(meta.get("backbone_tuned"))
    backbone = tensor_counts(folder / BACKBONE_FILE).get("backbone", 0) if tuned else None
    return {"kind": "model", "path": str(folder), "base": base_summary(meta["base"]), "backbone_tuned": tuned,
            "backbone_parameters": backbone, "tasks": tasks, **_totals(tasks)}


def describe_task_folder(folder: Path) -> dict[str, Any]:
    meta = read_json(folder / TASK_FILE)
    tasks = [describe_task(folder, meta["base"])]
    tuned = meta.get("backbone_checksum") != meta["base"].get("checksum")
    return {"kind": "task", "path": str(folder), "base": base_summary(meta["base"]), "backbone_tuned": tuned,
            "backbone_parameters": None, "tasks": tasks, **_totals(tasks)}


def _totals(tasks: list[dict[str, Any]]) -> dict[str, int]:
    return {"adapter_parameters": sum(t["parameters"]["adapter"] for t in tasks),
            "head_parameters": sum(t["parameters"]["head"] for t in tasks)}


def inspect_path(path: str | Path) -> dict[str, Any]:
    """The description of a saved model folder (``pal_config.json``) or task folder (``task.json``),
    with ``integrity``: "ok" when every check of a load that needs no backbone passes (``verify_saved``),
    else the first failure."""
    folder = Path(path)
    if (folder / CONFIG_FILE).is_file():
        info = describe_model(folder)
    elif (folder / TASK_FILE).is_file():
        info = describe_task_folder(folder)
    else:
        raise FileNotFoundError(f"{path} holds neither {CONFIG_FILE} (a saved model) nor {TASK_FILE} (a saved task)")
    try:
        verify_saved(folder)
        info["integrity"] = "ok"
    except AdapterLoadError as err:
        info["integrity"] = str(err)
    return info


def _layers(layers: list[int]) -> str:
    contiguous = layers == list(range(layers[0], layers[-1] + 1)) if layers else False
    return f"{layers[0]}-{layers[-1]}" if contiguous and len(layers) > 1 else ",".join(map(str, layers))


def _task_row(t: dict[str, Any]) -> list[str]:
    a = t["adapter"]
    own = ADAPTER_METHODS.get(a["method"])  # a method this process has not registered: shown as saved
    method = a["method"] + ("+lhuc" if a["lhuc"] and (own is None or own.has_ts) else "")  # LHUC added
    kind = TASK_KINDS.get(t["type"])  # "-" where labels are no classes (regression, ranking, QA)
    labels = ",".join(map(str, t["labels"])) if t["labels"] else ("-" if kind and not kind.uses_label_names
                                                                   else str(t["num_labels"]))
    return [t["name"], t["type"], labels, method, a["placement"], _layers(a["layers"]),
            "-" if a["d_s"] is None else str(a["d_s"]), f"{t['parameters']['adapter']:,}",
            f"{t['parameters']['head']:,}", "" if t["sha256_ok"] else "CORRUPTED"]


def render_inspection(info: dict[str, Any]) -> str:
    b = info["base"]
    backbone = ("tuned (backbone.safetensors, " + f"{info['backbone_parameters']:,} parameters)"
                if info["backbone_parameters"] is not None else
                "tuned (other weights than the base)" if info["backbone_tuned"] else "frozen (the base weights)")
    lines = [f"{'saved model' if info['kind'] == 'model' else 'saved task'}: {info['path']}",
             f"base: {b['model_type']}, hidden {b['hidden_size']}, {b['num_layers']} layers, vocab {b['vocab_size']}, "
             f"name {b['name_or_path'] or '-'}, checksum {b['checksum']}",
             f"backbone: {backbone}", ""]
    header = ["task", "type", "labels", "method", "placement", "layers", "d_s", "adapter", "head", ""]
    rows = [header, *(_task_row(t) for t in info["tasks"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) if i < 6 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              .rstrip() for r in rows]
    lines.append(f"\nadapter parameters {info['adapter_parameters']:,}, head parameters {info['head_parameters']:,}")
    lines.append("integrity: ok (formats, content hashes and every file's sha256 check out)"
                 if info["integrity"] == "ok" else f"integrity: FAILED: {info['integrity']}")
    return "\n".join(lines)
