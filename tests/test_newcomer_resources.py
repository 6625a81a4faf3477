"""A training process uses its share of the CPUs it may run on, and gives freed memory back."""

from __future__ import annotations

import sys

import pytest
import torch

from pal_adapters.training import resources
from pal_adapters.training.config import TrainConfig


@pytest.fixture
def seven_torch_threads(monkeypatch):
    """torch seeing 7 cores on a machine where this process may use 2 (the issue's demo)."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(resources, "available_cpus", lambda: 2)
    torch.set_num_threads(7)
    yield
    torch.set_num_threads(before)


def test_threads_are_capped_at_the_available_cpus(seven_torch_threads):
    assert resources.configure_threads() == 2
    assert torch.get_num_threads() == 2


def test_processes_of_one_machine_share_the_cpus(seven_torch_threads, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resources.thread_count() == 1


def test_omp_num_threads_and_num_threads_override_the_default(seven_torch_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resources.thread_count() == 3
    assert resources.thread_count(requested=5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "three")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='three'"):
        resources.thread_count()


def test_a_lower_count_set_by_the_caller_is_kept(seven_torch_threads):
    torch.set_num_threads(1)
    assert resources.thread_count() == 1


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota_is_read_from_v1_and_v2_files(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert resources.cgroup_cpu_quota(tmp_path) == quota


def test_available_cpus_is_at_most_the_affinity_mask():
    assert 1 <= resources.available_cpus() <= len(resources.os.sched_getaffinity(0))


def test_num_threads_is_a_validated_training_field():
    assert TrainConfig(num_threads=3).num_threads == 3
    with pytest.raises(ValueError, match="num_threads=-1"):
        TrainConfig(num_threads=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_goes_back_to_the_system_on_glibc():
    assert resources.return_freed_memory() is True
