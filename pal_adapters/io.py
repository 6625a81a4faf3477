"""Files: safetensors for tensors, JSON for everything else, atomic writes, strict reads.

A saved model is a folder::

    pal_config.json            adapter config, task definitions, base-model fingerprint, file hashes
    backbone.safetensors       only when the backbone was tuned
    tasks/<name>/task.json     one task: its definition, adapter config, fingerprint, file hash
    tasks/<name>/adapter.safetensors   "adapter.*" and "head.*" tensors of that task

Folders are written to a temporary sibling and swapped in with renames, so an interrupted save
leaves the previous save loadable. Every tensor file's sha256 is recorded in its JSON, so a
truncated or corrupted file is reported by name instead of loading garbage. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_directory  # noqa: F401  (re-exported: folders are written by renames)
from .params import is_adapter_parameter

FORMAT = "pal_adapters"
VERSION = 1


class AdapterLoadError(ValueError):
    """A saved model or task cannot be loaded; the message names the file and the problem."""


# ---- hashing and fingerprints ------------------------------------------------------------------
def weights_checksum(module: nn.Module) -> str:
    """sha256 over the non-adapter tensors of ``module`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone_state(module).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.is_meta:  # shape-only models (parameter counting) have no bytes to hash
            continue
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprint(backbone: nn.Module, num_depths: int) -> dict[str, Any]:
    """What identifies a base model: its type, sizes, name and a checksum of its weights."""
    config = backbone.config
    return {
        "model_type": config.model_type,
        "hidden_size": int(config.hidden_size),
        "num_layers": int(num_depths),
        "vocab_size": int(getattr(config, "vocab_size", 0) or 0),
        "name_or_path": getattr(config, "_name_or_path", "") or "",
        "checksum": weights_checksum(backbone),
    }


def check_fingerprint(saved: dict[str, Any], actual: dict[str, Any], where: Path, check_weights: bool) -> None:
    keys = ["model_type", "hidden_size", "num_layers", "vocab_size"] + (["checksum"] if check_weights else [])
    diffs = [f"{k}: saved {saved.get(k)!r}, this model {actual.get(k)!r}"
             for k in keys if saved.get(k) != actual.get(k)]
    if diffs:
        raise AdapterLoadError(
            f"{where} was saved for another base model ({saved.get('name_or_path') or 'unnamed'}): "
            + "; ".join(diffs)
            + ". Load it onto the base model it was trained with"
            + ("" if not check_weights else " (or pass check_weights=False if the weights differ on purpose)")
        )


def backbone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not is_adapter_parameter(k)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- writing -----------------------------------------------------------------------------------
def _unshared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU copies, each storage once; ``aliases`` maps dropped names to kept ones."""
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t.detach().cpu().contiguous()
    return kept, aliases


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Save ``tensors`` to ``path`` (safetensors; shared storage stored once); return the file's sha256."""
    kept, aliases = _unshared(tensors)
    save_file(kept, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})
    return file_sha256(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---- reading -----------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        hint = ""
        leftovers = sorted(path.parent.parent.glob(f".{path.parent.name}.old-*")) if path.parent.name else []
        if leftovers:
            hint = f"; an interrupted save left the previous version at {leftovers[-1]}"
        raise AdapterLoadError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{path} is not valid JSON (truncated or corrupted?): {err}") from err
    found = data.get("format") if isinstance(data, dict) else None
    if found != FORMAT:
        raise AdapterLoadError(f"{path} is not a {FORMAT} file (format={found!r})")
    if data.get("version", 0) > VERSION:
        raise AdapterLoadError(f"{path} has format version {data['version']}; this pal_adapters reads up to {VERSION}")
    return data


def read_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking it exists and matches its recorded hash."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"{path} does not exist")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise AdapterLoadError(f"{path} is corrupted or truncated: its sha256 does not match the one recorded at save")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from err
    for name, source in aliases.items():
        tensors[name] = tensors[source]
    return tensors


def check_state(path: Path, expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Strict key and shape check before anything is copied; the error lists every problem."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: saved {tuple(got[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in got and got[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if problems:
        raise AdapterLoadError(f"{path} does not fit this model: " + "; ".join(problems))


def copy_into(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked tensors into ``module``'s parameters and buffers (keeps dtype/device)."""
    state = module.state_dict()
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)
