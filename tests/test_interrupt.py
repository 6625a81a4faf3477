"""Ctrl-C (SIGINT) or SIGTERM during training: the step finishes, a checkpoint is written, one line
says so, the exit status is 130, and ``--resume`` continues from that step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import toy_backbone, toy_tokenizer, write_toy_tasks

from pal_adapters.training.config import TrainConfig
from pal_adapters.training.interrupt import StopSignals, TrainingInterrupted
from pal_adapters.training.loop import MultiTaskTrainer
from pal_adapters.training.report import read_jsonl
from pal_adapters.training.taskdefs import load_task_defs

ADAPTER = {"kind": "pal", "output_activation": "gelu", "hidden_size": 8, "num_heads": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    toy_backbone().save_pretrained(root / "base")
    toy_tokenizer().save_pretrained(root / "base")
    spec = write_toy_tasks(root / "data", n=48)
    # A run with no end in sight (its epochs must cover max_steps); no checkpoint but the interrupted one.
    training = {"batch_size": 8, "log_every": 1, "seed": 3, "epochs": 50_000, "steps_per_epoch": 20,
                "max_steps": 1_000_000, "eval_every": 1_000_000}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump({"model": str(root / "base"), "adapter": ADAPTER, "training": training, **spec}))
    return path


def train(run_file: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "pal_adapters.cli", "train", str(run_file), "--output-dir", str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt_when_training(process: subprocess.Popen, out: Path, signum: int) -> tuple[int, str, str]:
    """Send ``signum`` once the run has logged a few steps; its exit status, stdout and stderr."""
    deadline = time.monotonic() + 60
    while not (out / "log.jsonl").is_file() or len((out / "log.jsonl").read_text().splitlines()) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def saved_step(out: Path) -> int:
    return json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]


def test_sigint_to_the_cli_saves_a_checkpoint_prints_one_line_and_exits_130(run_file, tmp_path):
    out = tmp_path / "run"
    status, _, stderr = interrupt_when_training(train(run_file, out), out, signal.SIGINT)
    step = saved_step(out)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1] == f"interrupted at step {step}; checkpoint saved; continue with --resume"
    assert step >= 3 and max(r["step"] for r in read_jsonl(out / "log.jsonl")) == step


def trainer(task_defs, out: Path, max_steps: int) -> MultiTaskTrainer:
    config = TrainConfig(max_steps=max_steps, steps_per_epoch=20, batch_size=8, log_every=1, seed=3, eval_every=50,
                         adapter=ADAPTER, output_dir=str(out))
    return MultiTaskTrainer(config, task_defs, backbone=toy_backbone(), tokenizer=toy_tokenizer())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_step_finishes_it_and_resume_continues_from_it(run_file, tmp_path, monkeypatch, signum):
    run = yaml.safe_load(run_file.read_text())
    defs = load_task_defs({k: run[k] for k in ("tasks", "max_length")})
    out, step_of = tmp_path / "run", MultiTaskTrainer._optimizer_step

    def step_with_a_signal(self, step):
        if step == 2:  # the third step: the signal arrives in its middle
            os.kill(os.getpid(), signum)
        return step_of(self, step)

    monkeypatch.setattr(MultiTaskTrainer, "_optimizer_step", step_with_a_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer(defs, out, max_steps=40).fit()
    assert (stop.value.step, stop.value.signal_name, saved_step(out)) == (3, signum.name, 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back

    monkeypatch.setattr(MultiTaskTrainer, "_optimizer_step", step_of)
    result = trainer(defs, out, max_steps=6).fit(resume=True)
    assert result.steps == 6
    logged = [r["step"] for r in read_jsonl(out / "log.jsonl") if r["kind"] == "train"]
    assert sorted(set(logged)) == [1, 2, 3, 4, 5, 6]  # the interrupted step kept, none lost or repeated


def test_stop_signals_records_the_first_signal_and_lets_a_second_one_through():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs handlers between bytecodes of the main thread
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_training_interrupted_is_an_exit_with_status_130():
    stop = TrainingInterrupted(7, "SIGTERM")
    assert isinstance(stop, SystemExit) and stop.code == 130 and stop.step == 7
    assert str(stop) == "interrupted at step 7; checkpoint saved; continue with --resume"
