"""The scripted expert's palm-clearing grasp plan (ExpertConfig.hand_clearance; CPU, cameras off).

libero_object task 1 (cream cheese beside the taller tomato sauce) and task 2 (salad dressing,
a bottle whose cap the palm lands on): with the plain plan the descent stalls on the obstacle and
only the phase's step budget ends it; with the clearing plan it reaches its height at once, the
palm touches nothing, and the first grasp lifts the object.
"""

from __future__ import annotations

import numpy as np
import pytest

from medvtc.robotics.libero_env import LiberoEnv
from medvtc.robotics.scripted_expert import ExpertConfig, ScriptedExpert


def _palm_contacts(env: LiberoEnv) -> list[str]:
    sim = env.libero_env.env.sim
    model, data = sim.model._model, sim.data._data
    out = []
    for i in range(data.ncon):
        names = (model.geom(data.contact[i].geom1).name, model.geom(data.contact[i].geom2).name)
        if any(n.endswith("hand_collision") for n in names):
            out.append("/".join(names))
    return out


def _descend(env: LiberoEnv, expert: ScriptedExpert, limit: int = 150) -> tuple[int, list[str]]:
    """Run the expert until it starts closing; (steps spent descending, palm contacts then)."""
    descending = 0
    for _ in range(limit):
        if expert.phase == "close":
            return descending, _palm_contacts(env)
        descending += expert.phase == "descend"
        env.step(expert.act())
    raise AssertionError(f"the expert never closed the gripper (phase {expert.phase})")


@pytest.fixture(scope="module", params=[1, 2], ids=["cream_cheese", "salad_dressing"])
def task_env(request):
    e = LiberoEnv("libero_object", request.param, cameras=(), max_episode_steps=280)
    yield e
    e.close()


def test_plain_plan_stalls_on_the_obstacle(task_env):
    task_env.reset(seed=0, options={"init_state": "random"})
    expert = ScriptedExpert(task_env, ExpertConfig(clip="norm", hand_clearance=False))
    expert.reset()
    steps, contacts = _descend(task_env, expert)
    assert steps > expert.cfg.phase_budget  # only the step budget ended the descent
    assert contacts  # the palm rests on an object


def test_clearing_plan_descends_at_once_and_lifts_on_the_first_grasp(task_env):
    task_env.reset(seed=0, options={"init_state": "random"})
    expert = ScriptedExpert(task_env, ExpertConfig(clip="norm"))
    expert.reset()
    fp = expert._footprint(expert.object_name)
    assert expert.grasp_z < fp["top"] - 0.005  # the pads still close on the object, below its top
    steps, contacts = _descend(task_env, expert)
    assert steps < 20 and contacts == []
    assert abs(expert._eef()[0][2] - expert.grasp_z) < 0.006
    success = False
    for _ in range(280):
        _, _, terminated, truncated, info = task_env.step(expert.act())
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    assert success and expert.attempt == 1


def test_the_grasp_slides_along_the_long_axis_only_when_a_neighbour_is_in_the_way(task_env):
    """The salad dressing's grasp stays centred (only its height changes); the cream cheese's moves
    along its long axis, within its length, away from the tomato sauce."""
    task_env.reset(seed=0, options={"init_state": "random"})
    expert = ScriptedExpert(task_env, ExpertConfig(clip="norm"))
    expert.reset()
    fp = expert._footprint(expert.object_name)
    shift = float(np.linalg.norm(expert.grasp_xy - fp["centre"]))
    plain = ScriptedExpert(task_env, ExpertConfig(clip="norm", hand_clearance=False))
    plain.reset()
    if expert.object_name.startswith("salad_dressing"):
        assert shift < 1e-9 and expert.grasp_z > plain.grasp_z
    else:
        assert 0.0 < shift <= fp["length"] / 2 - 0.012 + 1e-9 and expert.grasp_z == pytest.approx(plain.grasp_z)
        long_axis = np.array([-fp["axis"][1], fp["axis"][0]])
        assert abs(abs((expert.grasp_xy - fp["centre"]) @ long_axis) - shift) < 1e-9  # along the long axis
