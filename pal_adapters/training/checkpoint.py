"""Training-state checkpoints: everything needed to resume a run exactly.

A checkpoint folder holds the model (``save_pretrained`` format: safetensors + JSON), the loss
weights (safetensors), the optimizer and LR schedule (``torch.save`` of plain state dicts, read
back with ``weights_only=True``), each process's RNG states, and ``trainer_state.json`` (step,
sampler and stream cursors, best score). It is written to a temporary folder and swapped in.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_directory, read_json, read_tensors, write_json, write_tensors
from ..saving import load_weights, save_pretrained

STATE_FILE = "trainer_state.json"


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


def save_checkpoint(directory: Path, *, model, weighting, optimizer, scheduler, state: dict[str, Any],
                    rank_rng: list[dict[str, Any]]) -> None:
    """Write the whole training state (main process); ``rank_rng`` has every process's RNG state."""

    def fill(tmp: Path) -> None:
        save_pretrained(model, tmp / "model")
        write_tensors(tmp / "loss_weighting.safetensors", dict(weighting.state_dict()))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rank_rng):
            torch.save(rng, tmp / f"rng-{rank}.pt")
        write_json(tmp / STATE_FILE, {"format": "pal_adapters", "version": 1, **state})

    atomic_directory(directory, fill)


def load_checkpoint(directory: Path, *, model, weighting, optimizer, scheduler, rank: int) -> dict[str, Any]:
    """Restore weights, optimizer, schedule and this process's RNG; return the trainer state."""
    directory = Path(directory)
    state = read_json(directory / STATE_FILE)
    load_weights(model, directory / "model")
    weighting.load_state_dict(read_tensors(directory / "loss_weighting.safetensors", None))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng_file = directory / f"rng-{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: the checkpoint was written by fewer processes")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state
