"""Runs killed at any point resume to the same weights and the same log as a run never killed.

A kill is simulated by raising ``Killed`` (a ``BaseException``, like a signal) at a chosen point and
making every clean-up that would still run (``finally`` blocks of the atomic writes) do nothing, so
the folder is left exactly as a SIGKILL leaves it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from helpers import toy_backbone, toy_tokenizer, write_toy_tasks

import pal_adapters.atomic as atomic
import pal_adapters.training.checkpoint as checkpoint
import pal_adapters.training.loop as loop
from pal_adapters.io import read_tensors
from pal_adapters.training.checkpoint import CheckpointError, recover_checkpoint, write_manifest
from pal_adapters.training.config import TrainConfig
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.report import plot_training_curves, read_jsonl, truncate_log
from pal_adapters.training.taskdefs import load_task_defs

# Checkpoints at steps 4 and 8, evaluations (and best/ saves) at 5, 10 and 12, log lines every 3 steps.
CONFIG = dict(max_steps=12, batch_size=8, lr=3e-3, log_every=3, eval_every=5, checkpoint_every=4, seed=5,
              adapter={"kind": "pal", "output_activation": "gelu", "hidden_size": 8, "num_heads": 2, "dropout": 0.2})


class Killed(BaseException):
    """The process dies here: nothing after it runs."""


@pytest.fixture(scope="module", autouse=True)
def no_plots():
    """Drawing the curves is most of a toy run's time and not what these tests check."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "plot_training_curves", lambda records, path: Path(path).write_bytes(b"png"))
        yield


@pytest.fixture(scope="module")
def task_defs(tmp_path_factory):
    return load_task_defs(write_toy_tasks(tmp_path_factory.mktemp("toy"), n=24))


def trainer(task_defs, out: Path) -> MultiTaskTrainer:
    config = TrainConfig(**CONFIG, output_dir=str(out))
    return MultiTaskTrainer(config, task_defs, backbone=toy_backbone(), tokenizer=toy_tokenizer())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{p.relative_to(folder)}/{k}": v for p in sorted(folder.rglob("*.safetensors"))
            for k, v in read_tensors(p, None).items()}


@pytest.fixture(scope="module")
def reference(task_defs, tmp_path_factory):
    """The uninterrupted run: final weights, log records and best/ weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    trainer(task_defs, out).fit()
    return {"last": weights(out / "last"), "best": weights(out / "best"), "log": read_jsonl(out / "log.jsonl")}


def assert_same_as_reference(out: Path, reference: dict) -> None:
    for folder in ("last", "best"):
        got = weights(out / folder)
        assert got.keys() == reference[folder].keys()
        for name, value in reference[folder].items():
            assert torch.equal(got[name], value), (folder, name)
    records = read_jsonl(out / "log.jsonl")
    steps = [(r["kind"], r["step"], r.get("task")) for r in records]
    assert len(steps) == len(set(steps)), "a step is logged twice"
    assert records == reference["log"]
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert leftovers == []


class Killer:
    """Stands in for ``os`` and ``shutil`` inside ``atomic.py``: kills the process at the ``at``-th call
    of ``kind`` (``"replace"`` or ``"rmtree"``) whose path ``matches``; after the kill nothing runs."""

    def __init__(self, kind: str, at: int, matches):
        self.kind, self.at, self.matches, self.calls, self.dead = kind, at, matches, 0, False

    def _hit(self, kind: str, path) -> bool:
        if kind == self.kind and self.matches(Path(path)):
            self.calls += 1
            return self.calls == self.at
        return False

    def replace(self, src, dst):
        if self.dead:
            return None
        if self._hit("replace", src):
            self.dead = True
            raise Killed(f"killed before renaming {src} -> {dst}")
        return os.replace(src, dst)

    def rmtree(self, path, ignore_errors=False):
        if self.dead:
            return None
        if self._hit("rmtree", path):
            self.dead = True
            next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()  # deleted part of it
            raise Killed(f"killed while deleting {path}")
        return shutil.rmtree(path, ignore_errors=ignore_errors)

    def __getattr__(self, name):  # everything else: the real os / shutil
        return getattr(os if hasattr(os, name) else shutil, name)


def top_checkpoint(path: Path) -> bool:
    return path.name.startswith(("checkpoint", ".checkpoint.")) and "model" not in path.name


# (where the kill happens, the step resumed from)
KILLS = {
    # the first checkpoint's rename (tmp -> checkpoint): the complete tmp is the checkpoint
    "first_save_rename": (("replace", 1), 4),
    # second save, first rename (checkpoint -> old): checkpoint (4) and a complete tmp (8)
    "before_first_rename": (("replace", 2), 8),
    # second save, between the renames: no checkpoint/, an old (4) and a complete tmp (8)
    "between_renames": (("replace", 3), 8),
    # second save, deleting the old copy: checkpoint (8) and a half-deleted old (4)
    "deleting_old": (("rmtree", 1), 8),
}


@pytest.mark.parametrize("where", list(KILLS))
def test_run_killed_inside_a_checkpoint_save_resumes_from_the_last_complete_one(task_defs, tmp_path, reference,
                                                                             monkeypatch, where):
    (kind, at), resume_step = KILLS[where]
    out = tmp_path / "run"
    killer = Killer(kind, at, lambda p: top_checkpoint(p) and p.parent == out)
    monkeypatch.setattr(atomic, "os", killer)
    monkeypatch.setattr(atomic, "shutil", killer)
    with pytest.raises(Killed):
        trainer(task_defs, out).fit()
    assert killer.dead
    monkeypatch.undo()
    assert recover_checkpoint_step(out) == resume_step
    trainer(task_defs, out).fit(resume=True)
    assert_same_as_reference(out, reference)


def recover_checkpoint_step(out: Path) -> int:
    """The step the leftovers resume from (on a copy, so the real resume does the recovery itself)."""
    copy = out.parent / "copy"
    shutil.copytree(out, copy)
    try:
        return recover_checkpoint(copy / "checkpoint")
    finally:
        shutil.rmtree(copy)


def test_run_killed_before_its_save_was_complete_resumes_from_the_previous_checkpoint(task_defs, tmp_path,
                                                                                       reference, monkeypatch):
    """Killed after writing every file of the step-8 checkpoint but its completion marker."""
    out = tmp_path / "run"
    real = checkpoint.write_manifest
    killer = Killer("none", 0, lambda p: False)
    monkeypatch.setattr(atomic, "shutil", killer)

    def dying(folder, step):
        if step == 8:
            killer.dead = True
            raise Killed("killed before complete.json")
        real(folder, step)

    monkeypatch.setattr(checkpoint, "write_manifest", dying)
    with pytest.raises(Killed):
        trainer(task_defs, out).fit()
    monkeypatch.undo()
    assert [p.name.split("-")[0] for p in out.glob(".checkpoint.*")] == [".checkpoint.tmp"]
    assert recover_checkpoint_step(out) == 4
    trainer(task_defs, out).fit(resume=True)
    assert_same_as_reference(out, reference)


def test_killed_three_times_at_random_steps_ends_like_an_uninterrupted_run(task_defs, tmp_path, reference,
                                                                          monkeypatch):
    out = tmp_path / "run"
    real_step = MultiTaskTrainer._optimizer_step
    rng = random.Random(0)
    kills = sorted(rng.sample(range(4, 12), 3))  # after the first checkpoint, at three different steps

    for number, kill_at in enumerate(kills):
        def dying(self, step, kill_at=kill_at):
            if step == kill_at:
                raise Killed(f"killed at step {step}")
            return real_step(self, step)

        monkeypatch.setattr(MultiTaskTrainer, "_optimizer_step", dying)
        with pytest.raises(Killed):
            trainer(task_defs, out).fit(resume=number > 0)
    monkeypatch.undo()
    trainer(task_defs, out).fit(resume=True)
    assert_same_as_reference(out, reference)


def test_resume_without_a_complete_checkpoint_is_refused_with_the_reasons(task_defs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"no complete checkpoint .*found nothing.*without --resume"):
        trainer(task_defs, out).fit(resume=True)
    # the first save killed before its completion marker: a tmp folder, nothing complete
    killer = Killer("none", 0, lambda p: False)
    monkeypatch.setattr(atomic, "shutil", killer)

    def dying(folder, step):
        killer.dead = True
        raise Killed

    monkeypatch.setattr(checkpoint, "write_manifest", dying)
    with pytest.raises(Killed):
        trainer(task_defs, out).fit()
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"\.checkpoint\.tmp-\d+-\w+: no complete\.json: the save was cut short"):
        trainer(task_defs, out).fit(resume=True)


# ---- recovery from hand-made layouts (no training) ---------------------------------------------
def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A folder with a checkpoint's state file, a tensor file and, if ``complete``, ``complete.json``;
    an incomplete ``checkpoint`` has a damaged file instead (without any marker it counts as an old save)."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"format": "pal_adapters", "version": 1, "step": step}))
    (folder / "optimizer.pt").write_bytes(bytes(range(256)) * step)
    if complete or folder.name == "checkpoint":
        write_manifest(folder, step)
    if not complete and folder.name == "checkpoint":
        (folder / "optimizer.pt").write_bytes(b"damaged")
    return folder


@pytest.mark.parametrize(("layout", "expected"), [
    ({"checkpoint": 8}, 8),
    ({".checkpoint.old-1": 4, ".checkpoint.tmp-1-ab": 8}, 8),
    ({".checkpoint.old-1": 4, ".checkpoint.tmp-1-ab": -8}, 4),  # negative: the tmp is incomplete
    ({"checkpoint": 4, ".checkpoint.tmp-1-ab": -8}, 4),
    ({"checkpoint": 8, ".checkpoint.old-1": 4}, 8),
    ({"checkpoint": -8, ".checkpoint.old-1": 4}, 4),  # a damaged main folder: fall back
    ({"checkpoint": 4, ".checkpoint.tmp-1-ab": 4}, 4),
])
def test_recover_picks_the_complete_checkpoint_with_the_highest_step(tmp_path, layout, expected):
    for name, step in layout.items():
        fake_checkpoint(tmp_path / name, abs(step), complete=step > 0)
    assert recover_checkpoint(tmp_path / "checkpoint") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == expected


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_checkpoint_file_changed_after_its_save_is_not_complete(tmp_path, damage):
    folder = fake_checkpoint(tmp_path / "checkpoint", 3)
    target = folder / "optimizer.pt"
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif damage == "truncate":
        target.write_bytes(data[:-1])
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint: optimizer\.pt (does not match|is missing)"):
        recover_checkpoint(folder)


def test_a_checkpoint_saved_before_completion_markers_still_resumes(tmp_path):
    (fake_checkpoint(tmp_path / "checkpoint", 6) / "complete.json").unlink()
    assert recover_checkpoint(tmp_path / "checkpoint") == 6


# ---- the log and the curves --------------------------------------------------------------------
def test_truncate_log_keeps_records_up_to_the_step_and_drops_a_half_line(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    path.write_text("\n".join(lines) + '\n{"kind": "train", "st')
    truncate_log(path, 4)
    assert path.read_text() == "\n".join(lines[:4]) + "\n"
    truncate_log(path, 0)
    assert path.read_text() == ""


def test_leftovers_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    dead = dead_pid()
    (tmp_path / f".curves.png.{dead}.x1.tmp").write_bytes(b"half a png")
    (tmp_path / f".best.tmp-{dead}-x2").mkdir()
    alive = tmp_path / f".curves.png.{os.getppid()}.x3.tmp"  # a live writer's file is left alone
    alive.write_bytes(b"")
    plot_training_curves([], tmp_path / "curves.png")
    atomic.atomic_directory(tmp_path / "best", lambda tmp: (tmp / "a").write_text("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best", "curves.png", alive.name])


def dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_fresh_run_clears_leftovers_and_starts_a_new_log(task_defs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "task": "x", "loss": 9.0}) + "\n")
    for name in (".checkpoint.tmp-1-a", ".best.old-1", ".last.tmp-1-b"):
        (out / name).mkdir()
    (out / ".curves.png.1.c.tmp").write_bytes(b"")
    trainer(task_defs, out).fit()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert [r["step"] for r in read_jsonl(out / "log.jsonl") if r["kind"] == "train"][0] == 1
    assert all(r.get("task") != "x" for r in read_jsonl(out / "log.jsonl"))
