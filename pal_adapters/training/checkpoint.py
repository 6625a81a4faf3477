"""Training-state checkpoints: everything needed to resume a run exactly.

A checkpoint folder holds the model (``save_pretrained`` format: safetensors + JSON), the loss
weights (safetensors), the optimizer and LR schedule (``torch.save`` of plain state dicts, read
back with ``weights_only=True``), each process's RNG states, ``trainer_state.json`` (step,
sampler and stream cursors, best score, losses not yet logged) and, written last,
``complete.json``: the step and every other file's sha256. The folder is written to a temporary
sibling and swapped in with two renames (``atomic.py``).

A run killed during a save may leave no ``checkpoint/`` at all, only ``.checkpoint.old-*`` (the
previous one) and ``.checkpoint.tmp-*`` (the new one, complete or not). ``recover_checkpoint``
puts the complete one with the highest step back in place, checking every file against
``complete.json``; with none complete, resuming is refused with the reason for each candidate.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_directory, old_dirs, tmp_dirs
from ..io import file_sha256, read_json, read_tensors, write_json, write_tensors
from ..saving import load_weights, save_pretrained
from .sharding import is_sharded, load_full_optimizer_state, loading

STATE_FILE, MANIFEST = "trainer_state.json", "complete.json"
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No complete checkpoint to resume from; the message says what was found and why it was rejected."""


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain numbers only, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, *, model, weighting, optimizer_state: dict[str, Any], scheduler,
                    state: dict[str, Any], rank_rng: list[dict[str, Any]]) -> None:
    """Write the whole training state (main process); ``rank_rng`` has every process's RNG state.
    A sharded model is saved inside ``sharding.gathered`` with ``sharding.full_optimizer_state``:
    the files are those of a one-process run."""

    def fill(tmp: Path) -> None:
        save_pretrained(model, tmp / "model")
        write_tensors(tmp / "loss_weighting.safetensors", dict(weighting.state_dict()))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rank_rng):
            torch.save(rng, tmp / f"rng-{rank}.pt")
        write_json(tmp / STATE_FILE, {"format": "pal_adapters", "version": 1, **state})
        write_manifest(tmp, state["step"])  # last: a folder without it is a save that was cut short

    atomic_directory(directory, fill, durable=True)  # a power loss must not take the last checkpoint


def write_manifest(folder: Path, step: int) -> None:
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / MANIFEST, {"format": "pal_adapters", "version": 1, "step": step, "files": files})


def checkpoint_step(folder: Path) -> tuple[int | None, str]:
    """``(step, "")`` for a complete checkpoint folder, else ``(None, why not)``."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        step, files = manifest["step"], manifest["files"]
    except FileNotFoundError:
        return None, f"no {MANIFEST}: the save was cut short"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{MANIFEST} is unreadable ({err})"
    for name, sha256 in files.items():
        path = folder / name
        if not path.is_file():
            return None, f"{name} is missing"
        if file_sha256(path) != sha256:
            return None, f"{name} does not match the sha256 recorded when it was saved"
    return step, ""


def recover_checkpoint(directory: Path) -> int:
    """Put the complete checkpoint with the highest step at ``directory`` (from the leftovers of a
    killed save if need be), delete the other leftovers and return its step.

    Raises ``CheckpointError`` listing every candidate and its problem when none is complete.
    """
    directory = Path(directory)
    candidates = [p for p in (directory, *tmp_dirs(directory), *old_dirs(directory)) if p.is_dir()]
    complete, rejected = [], []
    for rank, path in enumerate(candidates):  # on equal steps prefer ``directory``, then the newer .tmp
        step, why = checkpoint_step(path)
        if step is None and path == directory and not (path / MANIFEST).exists() and (path / STATE_FILE).is_file():
            step = read_json(path / STATE_FILE)["step"]  # saved before complete.json existed: renamed in whole
        if step is not None:
            complete.append((step, -rank, path))
        else:
            rejected.append(f"{path.name}: {why}")
    if not complete:
        found = "; ".join(rejected) if rejected else "nothing"
        raise CheckpointError(f"cannot resume: no complete checkpoint at {directory} (found {found}). "
                              "Start without --resume (resume=False) to train from step 0")
    step, _, best = max(complete)
    if best != directory:
        log.warning("%s was missing or incomplete (a run killed while saving); resuming from %s (step %d)",
                    directory, best.name, step)
        if directory.exists():  # damaged (the hashes said so), and a complete one is at hand
            shutil.rmtree(directory)
        os.replace(best, directory)
    for path in (*tmp_dirs(directory), *old_dirs(directory)):
        shutil.rmtree(path, ignore_errors=True)
    return step


def load_checkpoint(directory: Path, *, model, weighting, optimizer, scheduler, rank: int) -> dict[str, Any]:
    """Restore weights, optimizer, schedule and this process's RNG; return the trainer state.
    A sharded model (every process calls this) loads the full weights into each process's shards."""
    directory = Path(directory)
    state = read_json(directory / STATE_FILE)
    with loading(model) if is_sharded(model) else nullcontext():
        load_weights(model, directory / "model")
    weighting.load_state_dict(read_tensors(directory / "loss_weighting.safetensors", None))
    load_full_optimizer_state(optimizer, torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng_file = directory / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: the checkpoint was written by fewer processes")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state
