"""Saved files and folders get the modes the user's umask gives, not mkstemp/mkdtemp's private
0600/0700 nor safetensors' 0600: a model saved by one user can be served or read by another."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from helpers import tiny_model

from pal_adapters import AdapterConfig, TaskConfig, add_pal
from pal_adapters.atomic import atomic_directory, atomic_file, current_umask, default_mode
from pal_adapters.io import write_tensors
from pal_adapters.saving import save_pretrained
from pal_adapters.training.report import plot_training_curves


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (and ``root``) -> its permission bits."""
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def expected(root: Path, umask: int) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): (0o777 if p.is_dir() else 0o666) & ~umask
            for p in [root, *root.rglob("*")]}


def test_current_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still what the fixture set
    assert default_mode(directory=True) == 0o777 & ~umask and default_mode(directory=False) == 0o666 & ~umask


def test_a_saved_model_folder_has_the_umask_modes(umask, tmp_path):
    model = add_pal(tiny_model("bert"), {"a": TaskConfig(num_labels=2)},
                    adapter=AdapterConfig(hidden_size=8, num_heads=2), freeze_backbone=False)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.1)  # a tuned backbone: backbone.safetensors is written too
    save_pretrained(model, tmp_path / "best")
    assert modes(tmp_path / "best") == expected(tmp_path / "best", umask)
    assert any(name.endswith("backbone.safetensors") for name in modes(tmp_path / "best"))


def test_atomic_files_folders_and_tensor_files_have_the_umask_modes(umask, tmp_path):
    with atomic_file(tmp_path / "notes.txt", "w") as f:
        f.write("x")
    atomic_directory(tmp_path / "folder", lambda tmp: (tmp / "inner.txt").write_text("y"))
    write_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2)})
    plot_training_curves([{"kind": "train", "step": 1, "task": "a", "loss": 1.0}], tmp_path / "curves.png")
    assert modes(tmp_path) == expected(tmp_path, umask) | {tmp_path.name: modes(tmp_path)[tmp_path.name]}
