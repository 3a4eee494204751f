"""The LIBERO gymnasium layer and the scripted expert (small, CPU-only, < 60 s).

Environments are module-scoped: building a LIBERO scene costs seconds, stepping it milliseconds.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from medvtc.common.errors import ConfigError
from medvtc.robotics import libero_env
from medvtc.robotics.libero_env import ENV_ID, LiberoEnv, RenderBackendError, register_envs
from medvtc.robotics.scripted_expert import ScriptedExpert, run_episode


@pytest.fixture(scope="module")
def env():
    register_envs()
    e = gym.make(ENV_ID, suite="libero_object", task_id=0, camera_size=64)
    yield e
    e.close()


@pytest.fixture(scope="module")
def state_env():
    """Cameras off: what the expert and the time-limit test need, at a fraction of the cost."""
    e = LiberoEnv("libero_object", 0, cameras=(), max_episode_steps=280)
    yield e
    e.close()


def _object_poses(e: LiberoEnv) -> np.ndarray:
    rs = e.libero_env.env
    return np.array([rs.sim.data.body_xpos[i] for i in rs.obj_body_id.values()])


def test_make_and_observation_matches_space(env):
    obs, info = env.reset(seed=0, options={"init_state_id": 0})
    space = env.observation_space
    assert set(obs) == {"agentview", "wrist", "state"}
    for cam in ("agentview", "wrist"):
        assert obs[cam].shape == (64, 64, 3) and obs[cam].dtype == np.uint8
        assert obs[cam].std() > 5  # a real frame, not a blank buffer
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert space.contains(obs)
    assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
    assert info["is_success"] is False
    assert info["instruction"] == env.unwrapped.instruction == "pick up the alphabet soup and place it in the basket"
    assert env.render() is None  # no render_mode given


def test_images_follow_the_lerobot_convention(env):
    env.reset(options={"init_state_id": 0})
    inner = env.unwrapped
    obs = inner._observation()
    raw = inner.sim.render(width=64, height=64, camera_name="agentview")  # robosuite's OpenGL frame
    np.testing.assert_array_equal(obs["agentview"], raw[::-1, ::-1])


def test_same_init_state_gives_identical_scene(env):
    inner = env.unwrapped
    obs1, _ = env.reset(options={"init_state_id": 0})
    sim1, poses1 = inner.get_sim_state(), _object_poses(inner)
    env.step(np.array([0.5, 0.5, -0.5, 0, 0, 0, 1], np.float32))  # disturb before the second reset
    obs2, info = env.reset(options={"init_state_id": 0})
    assert info["init_state_id"] == 0
    np.testing.assert_array_equal(inner.get_sim_state(), sim1)
    np.testing.assert_array_equal(_object_poses(inner), poses1)
    np.testing.assert_array_equal(obs1["state"], obs2["state"])
    np.testing.assert_array_equal(obs1["agentview"], obs2["agentview"])


def test_zero_action_keeps_robot_still(env):
    obs, _ = env.reset(options={"init_state_id": 1})
    for _ in range(5):
        obs2, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert np.linalg.norm(obs2["state"][:3] - obs["state"][:3]) < 0.005
    assert not terminated and not truncated and reward == 0.0


def test_episode_truncates_at_the_limit(state_env):
    assert state_env.max_episode_steps == libero_env.SUITE_MAX_STEPS["libero_object"] == 280
    short = LiberoEnv("libero_object", 0, cameras=(), max_episode_steps=3, settle_steps=2)
    try:
        short.reset(options={"init_state_id": 0})
        flags = [short.step(np.zeros(7))[2:4] for _ in range(3)]
        assert flags == [(False, False), (False, False), (False, True)]  # (terminated, truncated)
    finally:
        short.close()


def test_random_placement_is_seeded(state_env):
    state_env.reset(seed=3, options={"init_state": "random"})
    a = state_env.get_sim_state()
    state_env.reset(seed=4, options={"init_state": "random"})
    b = state_env.get_sim_state()
    state_env.reset(seed=3, options={"init_state": "random"})
    np.testing.assert_array_equal(state_env.get_sim_state(), a)
    assert not np.array_equal(a, b)
    assert state_env.init_state_id is None


def test_unknown_suite_lists_valid_suites():
    with pytest.raises(ConfigError) as e:
        LiberoEnv("libero_objekt", 0)
    msg = str(e.value)
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        assert suite in msg


def test_task_id_out_of_range_lists_tasks():
    with pytest.raises(ConfigError) as e:
        LiberoEnv("libero_object", 10)
    msg = str(e.value)
    assert "0..9" in msg and "pick_up_the_alphabet_soup_and_place_it_in_the_basket" in msg


def test_missing_gl_library_names_the_package(monkeypatch):
    monkeypatch.setitem(libero_env._GL_LIBRARIES, "osmesa", (("libOSMesa-missing.so.99",) * 2, "libosmesa6"))
    with pytest.raises(RenderBackendError, match="apt-get install libosmesa6"):
        libero_env.check_gl_backend("osmesa")


def test_scripted_expert_solves_an_official_init_state(state_env):
    expert = ScriptedExpert(state_env)
    result = run_episode(state_env, expert, options={"init_state_id": 0})
    assert result["success"], result
    assert result["steps"] < state_env.max_episode_steps


def test_arm_noise_starts_random_scenes_the_way_official_states_start():
    """An official state is loaded over a reset with the arm at robosuite's initial pose, without
    the arm's controller being told (its nullspace target stays that pose); a random scene's arm
    noise is applied the same way, so both start alike (a policy tells the difference)."""
    from medvtc.robotics.demonstrations import set_robot_init_noise

    def controller_target(e: LiberoEnv) -> np.ndarray:
        return np.array(e.libero_env.env.robots[0].controller.initial_joint)

    def joints(e: LiberoEnv) -> np.ndarray:
        rs = e.libero_env.env
        return np.array(rs.sim.data.qpos[rs.robots[0]._ref_joint_pos_indexes])

    env = LiberoEnv("libero_object", 0, cameras=(), robot_init_noise=0.02)
    try:
        init_qpos = np.array(env.libero_env.env.robots[0].init_qpos)
        starts = []
        for options in ({"init_state_id": 0}, {"init_state": "random"}):
            env.reset(seed=1, options=options)
            assert np.abs(joints(env) - init_qpos).max() > 2e-3  # a noised arm...
            np.testing.assert_allclose(controller_target(env), init_qpos)  # ...the controller reset at the un-noised pose
            starts.append(joints(env))
        env.reset(seed=1, options={"init_state": "random"})
        np.testing.assert_array_equal(joints(env), starts[1])  # the noise comes from the seed
        # the older way (replaying older recordings): robosuite's reset draws it, the controller knows the pose
        set_robot_init_noise(env, 0.02, "reset")
        env.reset(seed=1, options={"init_state": "random"})
        assert env.robot_init_noise == 0.0 and np.abs(joints(env) - init_qpos).max() > 2e-3
        np.testing.assert_allclose(controller_target(env), joints(env), atol=1e-3)
    finally:
        env.close()
    with pytest.raises(ConfigError, match="robot_init_noise must be a finite number >= 0"):
        LiberoEnv("libero_object", 0, cameras=(), robot_init_noise=-0.1)
