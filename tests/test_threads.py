"""CPU thread defaults (`medvtc.common.threads`): the thread count the trainer uses and OpenMP's
wait policy, set before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from medvtc.common import threads
from medvtc.common.trainer import TrainConfig, Trainer


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_default_threads_follow_omp_num_threads_then_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.usable_cores() == 3 and threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.default_threads() == 2
    for bad in ("0", "two", "", "-1"):  # not a positive integer: OpenMP ignores it too
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert threads.default_threads() == 3


def test_configure_threads_sets_torch(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert threads.configure_threads(0) == 1 and torch.get_num_threads() == 1
    assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads must be >= 0"):
        threads.configure_threads(-1)


def test_trainer_uses_train_threads(tmp_path, restore_threads):
    data = torch.utils.data.TensorDataset(torch.randn(8, 2))
    torch.set_num_threads(2)
    trainer = Trainer(torch.nn.Linear(2, 1), data, TrainConfig(max_steps=1, threads=1, progress=False), tmp_path)
    assert trainer.threads == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        TrainConfig(threads=-2).validate()


def _wait_policy_after_import(env: dict[str, str]) -> str:
    code = "import os, medvtc; print(os.environ.get('OMP_WAIT_POLICY', '<unset>'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_medvtc_prefers_a_passive_openmp_wait_unless_the_user_chose():
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", threads.KEEP_WAIT_POLICY_ENV)}
    assert _wait_policy_after_import(base) == "PASSIVE"
    assert _wait_policy_after_import({**base, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    assert _wait_policy_after_import({**base, threads.KEEP_WAIT_POLICY_ENV: "1"}) == "<unset>"
