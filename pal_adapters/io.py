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
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_directory, default_mode, glob_escape  # noqa: F401  (atomic_directory re-exported)
from .params import is_adapter_parameter

FORMAT = "pal_adapters"
VERSION = 3  # 2: every JSON records its own content_sha256, pal_config.json every task file's sha256;
#            3: a task records its kind options, max_length and input form (save_format.TASK_FIELDS_V3)
OLDEST_VERSION = 1
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


class AdapterLoadError(ValueError):
    """A saved model or task cannot be loaded; the message names the file and the problem."""


# ---- hashing and fingerprints ------------------------------------------------------------------
def weights_checksum(module: nn.Module) -> str:
    """sha256 over the non-adapter tensors of ``module`` (names, dtypes, shapes and bytes)."""
    return tensors_checksum(backbone_state(module))


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
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
    """Save ``tensors`` to ``path`` (safetensors; shared storage stored once); return the file's sha256.

    The metadata holds one key: safetensors writes several in a varying order, and the same
    tensors must give the same bytes (and recorded sha256) every time.
    """
    kept, aliases = _unshared(tensors)
    save_file(kept, str(path), metadata={"aliases": json.dumps(aliases, sort_keys=True)})
    os.chmod(path, default_mode(directory=False))  # safetensors creates its files 0600, whatever the umask
    return file_sha256(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---- reading -----------------------------------------------------------------------------------
def missing_file_message(path: Path) -> str:
    """Why ``path`` cannot be read, said of what is there: a missing folder as a missing folder, a
    folder that holds the file one level down (a checkpoint's ``model/``, a run's ``best/``) by
    naming those folders, the previous version an interrupted save left aside."""
    folder = path.parent
    leftovers = sorted(folder.parent.glob(f".{glob_escape(folder.name)}.old-*")) if folder.name else []
    if leftovers:
        return f"{path} does not exist; an interrupted save left the previous version at {leftovers[-1]}"
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    below = sorted(p.parent for p in folder.glob(f"*/{glob_escape(path.name)}"))
    if below and (folder / "trainer_state.json").is_file():
        return f"{folder} is a training checkpoint, not a saved model: its model is {below[0]}"
    if below:
        return f"{folder} holds no {path.name}; the folders below it that do: {', '.join(map(str, below))}"
    return f"{path} does not exist"


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(missing_file_message(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise AdapterLoadError(f"{path} cannot be read: {err}") from err
    except UnicodeDecodeError as err:
        raise AdapterLoadError(f"{path} is not valid JSON (corrupted?): {err}") from err
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:  # a JSONDecodeError is a ValueError
        raise AdapterLoadError(f"{path} is not valid JSON (truncated or corrupted?): {err}") from err
    found = data.get("format") if isinstance(data, dict) else None
    if found != FORMAT:
        raise AdapterLoadError(f"{path} is not a {FORMAT} file (format={found!r})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < OLDEST_VERSION:
        raise AdapterLoadError(f"{path}: field version={version!r} must be an integer >= {OLDEST_VERSION}")
    if version > VERSION:
        raise AdapterLoadError(f"{path} has format version {version}, written by a newer pal_adapters; this one "
                               f"reads versions {OLDEST_VERSION} to {VERSION}: upgrade pal_adapters to load it")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (a repeated key would hide the value saved first)."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"repeated keys {repeated}")
    return dict(pairs)


def read_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking it exists and matches its recorded hash."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"{path} does not exist")
    try:
        actual = file_sha256(path)
    except OSError as err:
        raise AdapterLoadError(f"{path} cannot be read: {err}") from err
    if expected_sha256 is not None and actual != expected_sha256:
        raise AdapterLoadError(f"{path} is corrupted or truncated: its sha256 does not match the one recorded at save")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # the file's bytes are the problem, whatever safetensors raises about them
        raise AdapterLoadError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from err
    for name, source in _aliases(path, metadata, tensors).items():
        tensors[name] = tensors[source]
    return tensors


def _aliases(path: Path, metadata: dict[str, str], stored: dict[str, torch.Tensor]) -> dict[str, str]:
    """The metadata's alias -> stored-name map, checked: an alias names no stored tensor, a source is one."""
    unknown = sorted(set(metadata) - {"aliases", "format"})  # "format": files of format version 1
    if unknown:
        raise AdapterLoadError(f"{path}: unknown metadata keys {unknown}; a saved tensor file has only 'aliases'")
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except ValueError as err:
        raise AdapterLoadError(f"{path}: metadata field aliases is not valid JSON: {err}") from err
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise AdapterLoadError(f"{path}: metadata field aliases={aliases!r} must map tensor names to tensor names")
    clash = sorted(set(aliases) & set(stored))
    if clash:
        raise AdapterLoadError(f"{path}: metadata field aliases names stored tensors {clash}; an alias may not "
                               "replace a stored tensor")
    dangling = sorted(f"{k} -> {v}" for k, v in aliases.items() if v not in stored)
    if dangling:
        raise AdapterLoadError(f"{path}: metadata field aliases points at tensors the file does not hold: {dangling}")
    return aliases


def check_state(path: Path, expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Strict key and shape check before anything is copied; the error lists every problem."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: saved {tuple(got[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in got and got[k].shape != v.shape]
    dtypes = [f"{k}: saved {_dtype_name(got[k].dtype)}, this model has {_dtype_name(v.dtype)}"
              for k, v in expected.items() if k in got and got[k].dtype != v.dtype]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if dtypes:  # never cast silently: an int relabelled float, or rounded halves, are other weights
        problems.append("dtype mismatches (tensors load in the dtype they were saved in; load onto a backbone of "
                        "that dtype and convert the model after loading): " + "; ".join(dtypes))
    if problems:
        raise AdapterLoadError(f"{path} does not fit this model: " + "; ".join(problems))


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def copy_into(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked tensors into ``module``'s parameters and buffers (keeps dtype/device)."""
    state = module.state_dict()
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)
