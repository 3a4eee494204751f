"""The no-vision floor (`medvtc.robotics.replay`): a recorded demonstration's actions, saved and
loaded as the floor's "policy", replayed open loop from official initial states."""

from __future__ import annotations

import numpy as np
import pytest

from medvtc.common.errors import UserError
from medvtc.robotics.replay import demonstration_actions, load_replay, replay_episode, replay_rollouts, save_replay
from tests.robotics.conftest import DEMO_SUITE, DEMO_TASK


def _instruction(summary) -> str:
    return summary.tasks[0].instruction


def test_demonstration_actions_are_the_recorded_ones(recorded_demos):
    from medvtc.robotics.demonstrations import ACTION_KEY, load_demonstrations

    root, summary = recorded_demos
    actions = demonstration_actions(root, _instruction(summary))
    ds = load_demonstrations(root)
    recorded = np.stack([np.asarray(a) for a in ds.hf_dataset.with_format("numpy")[ACTION_KEY]])
    assert actions.shape == (summary.tasks[0].frames, 7)
    np.testing.assert_array_equal(actions, recorded)
    with pytest.raises(UserError, match="has no demonstration of the task 'open the drawer'"):
        demonstration_actions(root, "open the drawer")
    with pytest.raises(UserError, match="holds 1 demonstrations of .*; episode 1 does not exist"):
        demonstration_actions(root, _instruction(summary), episode=1)


def test_saved_replay_loads_back(recorded_demos, tmp_path):
    root, summary = recorded_demos
    lengths = save_replay(tmp_path / "final", root)
    assert lengths == {_instruction(summary): summary.tasks[0].frames}
    loaded = load_replay(tmp_path / "final")
    np.testing.assert_array_equal(loaded[_instruction(summary)], demonstration_actions(root, _instruction(summary)))
    with pytest.raises(UserError, match="replay.safetensors is missing"):
        load_replay(tmp_path)


class _ScriptedEnv:
    """Records the actions it is given; succeeds at step `succeed_at` (or truncates at `limit`)."""

    def __init__(self, limit: int, succeed_at: int | None = None) -> None:
        self.limit, self.succeed_at, self.actions, self.reset_options = limit, succeed_at, [], None

    def reset(self, *, seed=None, options=None):
        self.actions, self.reset_options = [], options
        return {}, {}

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        n = len(self.actions)
        success = self.succeed_at is not None and n >= self.succeed_at
        return {}, float(success), success, n >= self.limit and not success, {"is_success": success}


def test_replay_holds_still_with_the_last_gripper_command_after_the_demonstration():
    demo = np.tile(np.array([0.5, -0.5, 0.1, 0.0, 0.0, 0.2, 1.0], dtype=np.float32), (3, 1))
    demo[-1, 6] = -1.0
    env = _ScriptedEnv(limit=6)
    out = replay_episode(env, demo, init_state_id=4)
    assert env.reset_options == {"init_state_id": 4}  # an official initial state
    assert out == {"init_state_id": 4, "success": False, "steps": 6, "policy_ms_per_step": 0.0}
    np.testing.assert_array_equal(np.stack(env.actions[:3]), demo)
    for held in env.actions[3:]:
        np.testing.assert_array_equal(held, [0, 0, 0, 0, 0, 0, -1.0])
    env = _ScriptedEnv(limit=6, succeed_at=2)
    assert replay_episode(env, demo, 0)["success"] and len(env.actions) == 2


def test_replay_rollouts_in_the_simulator(recorded_demos):
    root, summary = recorded_demos
    actions = {DEMO_TASK: demonstration_actions(root, _instruction(summary))}
    out = replay_rollouts(actions, suite=DEMO_SUITE, task_ids=[DEMO_TASK], episodes=2, first_init_state=3,
                          max_episode_steps=4, progress=False)
    eps = out["tasks"][DEMO_TASK]["episodes"]
    assert [e["init_state_id"] for e in eps] == [3, 4] and all(e["steps"] == 4 for e in eps)
    assert out["tasks"][DEMO_TASK]["instruction"] == _instruction(summary) and out["success_rate"] == 0.0
    with pytest.raises(UserError, match="no demonstration actions for task 1"):
        replay_rollouts(actions, suite=DEMO_SUITE, task_ids=[1], episodes=1, progress=False)
