"""Two CPU processes (gloo) under ``accelerate launch`` train exactly like one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_toy_tasks
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "distributed_run.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["one_task", "mixed"])
def test_two_processes_match_one_process_and_each_other(tmp_path, mode):
    spec = write_toy_tasks(tmp_path / "data")
    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(SCRIPT), str(task_file), str(tmp_path / "two"), mode]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("num_processes=2") == 2, done.stdout[-2000:]
    rank0 = load_file(str(tmp_path / "two" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "rank1.safetensors"))

    sys.path.insert(0, str(SCRIPT.parent))
    from distributed_run import run

    (tmp_path / "one").mkdir()
    single = run(str(task_file), str(tmp_path / "one"), mode == "mixed")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # the processes never drift apart
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
