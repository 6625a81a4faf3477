"""Two CPU processes (gloo) under ``accelerate launch`` train exactly like one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import write_toy_tasks
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "distributed_run.py"
sys.path.insert(0, str(SCRIPT.parent))  # train_cases.py, distributed_run.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(script: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` on 2 CPU processes (gloo, a free loopback port). Past
    ``timeout`` (a collective waiting for a process that never comes) the launcher and its
    workers, one process group, are killed and the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"2 processes still running after {timeout} s (a hang), killed:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("mode", ["one_task", "mixed"])
def test_two_processes_match_one_process_and_each_other(tmp_path, mode):
    spec = write_toy_tasks(tmp_path / "data")
    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps(spec))  # JSON is YAML
    done = launch_two(SCRIPT, str(task_file), str(tmp_path / "two"), mode, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("num_processes=2") == 2, done.stdout[-2000:]
    rank0 = load_file(str(tmp_path / "two" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "rank1.safetensors"))

    from distributed_run import run

    (tmp_path / "one").mkdir()
    single = run(str(task_file), str(tmp_path / "one"), mode == "mixed")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # the processes never drift apart
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("grad_sync", ["ddp", "flat"])
def test_both_gradient_averagings_train_like_one_process(tmp_path, grad_sync):
    """Accelerate's DDP (find_unused_parameters; no_sync under grad_accum) and the flat all-reduce,
    on 2 processes, equal one process to 1e-5 after 20 steps: one-task batches; mixed with
    grad_accum 2 (tasks differ between the micro-batches) and uncertainty weighting; mixed batches
    of 4 rows over 3 tasks with a frozen backbone (a process misses tasks: stand-in rows); a resume
    at step 10. Under a hard timeout: a reducer waiting for a process that never comes fails it."""
    train_cases_on_two_and_one(tmp_path, grad_sync, f"sharded=False ddp={grad_sync == 'ddp'}")


def train_cases_on_two_and_one(tmp_path: Path, mode: str, engine: str) -> None:
    """Every case of ``tests/scripts/train_cases.py`` on 2 processes in ``mode`` (which must report
    ``engine``, e.g. ``sharded=True ddp=False``) and on one plain process: the same trainable
    weights to 1e-5 after 20 steps. Outputs in ``tmp_path/two`` and ``tmp_path/one``."""
    from train_cases import CASES, main

    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps(write_toy_tasks(tmp_path / "data")))
    done = launch_two(SCRIPT.parent / "train_cases.py", str(task_file), str(tmp_path / "two"), mode)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"num_processes=2 {engine}") == 2, done.stdout[-2000:]
    (tmp_path / "one").mkdir()
    main(str(task_file), str(tmp_path / "one"), "none")
    for case in CASES:
        two, one = (load_file(str(tmp_path / d / f"{case}.safetensors")) for d in ("two", "one"))
        assert two.keys() == one.keys(), case
        for name in two:
            torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5,
                                       msg=lambda m, n=f"{case} {name}": f"{n}: {m}")


def test_grad_sync_names_its_choices_and_ddp_needs_find_unused_parameters():
    from accelerate import DistributedDataParallelKwargs

    from pal_adapters.training.config import TrainConfig
    from pal_adapters.training.distributed import data_parallel

    assert TrainConfig().grad_sync == "ddp"
    with pytest.raises(ValueError, match="'ddp', 'flat'"):
        TrainConfig(grad_sync="horovod")
    model = torch.nn.Linear(2, 2)
    assert data_parallel(SimpleNamespace(num_processes=1, ddp_handler=None), model) is model
    strict = SimpleNamespace(num_processes=2, ddp_handler=DistributedDataParallelKwargs(find_unused_parameters=False))
    with pytest.raises(ValueError, match="find_unused_parameters=False.*grad_sync: flat"):
        data_parallel(strict, model)
