"""Shared fixtures for the robotics tests: one short scripted-expert recording per session.

The recording (one successful LIBERO-Object episode, 32 px cameras, anti-aliasing off) takes
~20 s on a 2-core CPU, almost all of it rendering; every test that needs a real LeRobotDataset
reads this one.
"""

from __future__ import annotations

import pytest
import torch

DEMO_SUITE = "libero_object"
DEMO_TASK = 0
DEMO_SIZE = 32
DEMO_ENV_KWARGS = {"fast_render": True}


@pytest.fixture(scope="session")
def recorded_demos(tmp_path_factory):
    """(root, RecordingSummary) of a 1-episode recording of libero_object task 0."""
    from medvtc.robotics.demonstrations import record_demonstrations

    root = tmp_path_factory.mktemp("libero_demos") / "demos"
    summary = record_demonstrations(
        root, suite=DEMO_SUITE, task_ids=[DEMO_TASK], episodes_per_task=1, seed=0, camera_size=DEMO_SIZE,
        progress=False, env_kwargs=DEMO_ENV_KWARGS,
    )
    return root, summary


@pytest.fixture(scope="module")
def trained_run(recorded_demos, tmp_path_factory):
    """A tiny Compressor-VLA run (2 training steps) on the session's recording: 12 visual tokens of 32."""
    from medvtc.robotics.task import LiberoTask
    from tests.robotics.test_rollout_bench import overrides

    root, _ = recorded_demos
    out = tmp_path_factory.mktemp("libero_run") / "run"
    task = LiberoTask()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert task.train(task.load_config(None, overrides(root, out, "train.max_steps=2"))) == 0
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Shared 2-core machines: one torch thread keeps run times steady (as in tests/compressors)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
