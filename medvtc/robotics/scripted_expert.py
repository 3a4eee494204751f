"""A scripted pick-and-place expert for LIBERO, driven by the simulator's privileged state.

It reads the task's goal from LIBERO's parsed BDDL problem (``env.parsed_problem["goal_state"]``),
so it needs no per-task tables:

* ``(In <object> <container>_contain_region)`` - LIBERO-Object "pick up the X and place it in the
  basket": the place target is the container's ``contain_region`` site;
* ``(On <object> <target>)`` - LIBERO-Spatial "pick up the black bowl ... and place it on the plate":
  the place target is the target object's body.

Object geometry comes from the collision geoms of the object's body subtree (world-frame corners of
their local AABBs): the top-down grasp is centred on the footprint, with the fingers closing across
the narrowest horizontal width; objects wider than the open gripper (bowls) are grasped by the rim,
one finger inside, one outside.

The grasp height also keeps the hand (the palm above the fingers) clear of whatever lies under it
(``hand_clearance``): the object's own top (a tall bottle's cap) and any neighbour the palm would
land on. Without it the descent stalls on the obstacle and only the phase's step budget ends it:
the demonstrations then hold the arm still, gripper open, for up to 60 steps before it closes, a
wait no policy can time from what it sees (libero_object task 2, the salad dressing, every demo),
and on libero_object task 1 (the cream cheese beside the tomato sauce) the palm lands on the
neighbour, the grasp closes on air and is retried in 41 of 50 demonstrations. Where the neighbour
blocks the centred grasp, the grasp point slides along the object's long axis until the palm clears.

Phases: approach above the object -> descend -> close -> lift -> move above the target -> lower ->
open -> retreat. Each phase is a proportional controller on the OSC_POSE delta action (the
controller scales +-1 to +-0.05 m and +-0.5 rad per step), with a step budget; a grasp that did not
lift the object is retried from the approach. Labelling states a policy drove (DAgger, the
recovery mode), the expert also follows the policy's own grasp: once the policy holds the object,
the labels carry it from there (`ExpertConfig.follow_grasp`).

Usage::

    env = LiberoEnv("libero_object", 0, cameras=())
    expert = ScriptedExpert(env)
    obs, info = env.reset(seed=0)
    expert.reset()
    while True:
        obs, r, terminated, truncated, info = env.step(expert.act())
        if terminated or truncated:
            break
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvtc.common.errors import ConfigError

# OSC_POSE scaling of a +-1 action (robosuite's default osc_pose.json, which LIBERO uses).
POS_SCALE = 0.05  # metres per step
ROT_SCALE = 0.5  # radians per step

# Panda gripper geometry, measured in robosuite 1.4's model:
# the finger pads are 0.0036 m above the grip site, the lowest finger point ~0.008 m below it, and
# the pads are 0.084 m apart when open.
FINGER_BELOW_SITE = 0.009
MAX_GRASP_WIDTH = 0.072  # widest footprint we grasp across; wider objects are grasped by the rim
RIM_INSET = 0.012  # rim grasp: how far inside the outer edge the grip site goes

OPEN, CLOSE = -1.0, 1.0


@dataclass
class ExpertConfig:
    """Gains and margins (defaults tuned on libero_object official init states)."""

    pos_gain: float = 2.0  # action per (error / POS_SCALE)
    rot_gain: float = 1.5  # action per (error / ROT_SCALE)
    hover: float = 0.06  # approach height above the object's top
    clearance: float = 0.04  # margin above the container rim while carrying
    release_above_floor: float = 0.04  # object bottom height above the container floor at release
    grasp_depth: float = 0.03  # how far below the object top the grip site goes
    grasp_max_frac: float = 0.65  # ... but never above this fraction of the object height
    xy_tol: float = 0.008
    z_tol: float = 0.01
    close_steps: int = 12
    open_steps: int = 10
    phase_budget: int = 60  # steps before a phase gives up and moves on
    max_attempts: int = 3
    # Plan a pinch grasp's height (and, if a neighbour is in the way, slide the grasp along the
    # object's long axis) so the hand's palm clears every object geom under it by `palm_margin`
    # (module docstring; the fingers are not checked, rim grasps keep their plan); false: the
    # plain depth rule (recordings made before it).
    hand_clearance: bool = True
    palm_margin: float = 0.005
    min_finger_overlap: float = 0.012  # a grasp must reach at least this far below the object's top
    # How a move's velocity is limited: "axis" clips each axis to the phase's speed (the arm moves
    # along the largest error first: a short full-speed burst on a small axis, hard for a policy to
    # imitate); "norm" scales the whole translation so its length is at most the speed (a straight
    # line to the goal, every axis corrected in proportion over the whole move).
    clip: str = "axis"
    # Recovery for states the expert did not drive itself (DAgger labelling, `medvtc.robotics.dagger`):
    # a descent that drifted sideways goes back up to re-align, a grasp that failed is retried
    # without limit, and an object dropped on the way is grasped again. Off for the expert's own
    # recordings, which it drives itself.
    recover: bool = False
    # Recovery mode only: when the driving policy has grasped the object itself (both finger pads
    # touch it, robosuite's `_check_grasp`) while the expert is still approaching or descending,
    # the expert carries the object from that grasp (lift, transport, place) instead of labelling
    # "open, go to my own grasp point", which teaches the policy to let go of what it holds.
    # DAgger round 1 of libero_object tasks 1 and 2 (the same states relabelled): 36 % and 61 % of
    # the on-policy frames with the gripper partly closed were labelled "open" without it, 5 % and
    # 9 % with it, 0-0.5 % in the expert's own demonstrations (scripts/libero_label_conflict.py).
    # False: those older labels.
    follow_grasp: bool = True

    def __post_init__(self) -> None:
        if self.clip not in ("axis", "norm"):
            raise ValueError(f"expert clip must be 'axis' or 'norm', got {self.clip!r}")


def _body_subtree(model, root: int) -> set[int]:
    bodies = {root}
    for b in range(model.nbody):
        p = b
        while p != 0:
            if p == root:
                bodies.add(b)
                break
            p = model.body_parentid[p]
    return bodies


def _collision_corners(sim, geoms: list[int]) -> np.ndarray:
    """World-frame corners of the geoms' local AABBs, (8 * len(geoms), 3)."""
    model, data = sim.model._model, sim.data._data
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    pts = []
    for g in geoms:
        centre, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
        rot = data.geom_xmat[g].reshape(3, 3)
        pts.append(data.geom_xpos[g] + (centre + signs * half) @ rot.T)
    return np.concatenate(pts)


def _axis_angle_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle of target @ current.T: the world-frame rotation the OSC goal applies to current."""
    err = target @ current.T
    cos = np.clip((np.trace(err) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([err[2, 1] - err[1, 2], err[0, 2] - err[2, 0], err[1, 0] - err[0, 1]])
    n = np.linalg.norm(axis)
    if n < 1e-9:  # angle ~ pi: axis from the symmetric part
        w, v = np.linalg.eigh((err + err.T) / 2.0)
        axis = v[:, np.argmax(w)]
        n = 1.0
    return axis / n * angle


class ScriptedExpert:
    """Privileged-state pick-and-place policy for LIBERO tasks with one ``In``/``On`` goal.

    Args:
        env: a `medvtc.robotics.libero_env.LiberoEnv` (or a gymnasium wrapper of one).
        config: gains and margins.
    """

    PHASES = ("approach", "descend", "close", "lift", "transport", "lower", "release", "retreat", "done")

    def __init__(self, env, config: ExpertConfig | None = None) -> None:
        self.env = getattr(env, "unwrapped", env)
        self.cfg = config or ExpertConfig()
        problem = self.env.libero_env.env.parsed_problem
        self.predicate, self.object_name, self.target_name, self.target_kind = parse_goal(problem)

    # ------------------------------------------------------------------ scene queries

    @property
    def _robosuite(self):
        return self.env.libero_env.env

    @property
    def _sim(self):
        return self._robosuite.sim

    def _geoms_of(self, name: str) -> list[int]:
        rs = self._robosuite
        model = self._sim.model._model
        bodies = _body_subtree(model, rs.obj_body_id[name])
        return [
            g
            for g in range(model.ngeom)
            if model.geom_bodyid[g] in bodies and (model.geom_contype[g] or model.geom_conaffinity[g])
        ]

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        robot = self._robosuite.robots[0]
        data = self._sim.data
        return np.array(data.site_xpos[robot.eef_site_id]), np.array(data.site_xmat[robot.eef_site_id]).reshape(3, 3)

    def _footprint(self, name: str) -> dict[str, Any]:
        """Grasp frame of an object: narrowest horizontal direction, its width, centre, z range."""
        pts = _collision_corners(self._sim, self._obj_geoms[name])
        xy = pts[:, :2]
        best = None
        for theta in np.linspace(0.0, math.pi, 72, endpoint=False):
            u = np.array([math.cos(theta), math.sin(theta)])
            v = np.array([-u[1], u[0]])
            pu, pv = xy @ u, xy @ v
            width = pu.max() - pu.min()
            if best is None or width < best[0]:
                centre = u * (pu.max() + pu.min()) / 2 + v * (pv.max() + pv.min()) / 2
                best = (width, u, centre, pv.max() - pv.min())
        width, u, centre, length = best
        return {
            "width": float(width),
            "length": float(length),
            "axis": u,
            "centre": centre,
            "bottom": float(pts[:, 2].min()),
            "top": float(pts[:, 2].max()),
        }

    def _target_xy_and_floor(self) -> tuple[np.ndarray, float, float]:
        """Place point (xy), the container's floor and rim heights."""
        rs = self._robosuite
        if self.target_kind == "site":
            site = self.target_name
            pos = np.array(self._sim.data.get_site_xpos(site))
            container = rs.object_sites_dict[site].parent_name
            pts = _collision_corners(self._sim, self._obj_geoms[container])
            return pos[:2], float(pts[:, 2].min()), float(pts[:, 2].max())
        pts = _collision_corners(self._sim, self._obj_geoms[self.target_name])
        pos = np.array(self._sim.data.body_xpos[rs.obj_body_id[self.target_name]])
        top = float(pts[:, 2].max())
        return pos[:2], top, top

    # ------------------------------------------------------------------ policy

    def reset(self) -> None:
        """Plan from the current scene; call after every ``env.reset()``."""
        self._obj_geoms = {n: self._geoms_of(n) for n in self._names_needed()}
        model = self._sim.model._model
        self._object_geom_names = [model.geom(g).name for g in self._obj_geoms[self.object_name]]
        if self.cfg.hand_clearance:
            self._obstacle_geoms = [g for n in self._robosuite.obj_body_id for g in self._geoms_of(n)]
            self._hand_in_site = self._hand_corners_in_site_frame()
        self.phase = "approach"
        self.attempt = 1
        self._phase_steps = 0
        self._plan_grasp()

    def _hand_corners_in_site_frame(self) -> np.ndarray:
        """Corners of the hand's collision geom (the palm; the fingers go beside the object) in the
        grip site's frame, (8, 3): rigid, so valid at any pose."""
        model = self._sim.model._model
        hand = [g for g in range(model.ngeom) if model.geom(g).name.endswith("hand_collision")]
        if not hand:
            raise ConfigError("hand_clearance needs the gripper's 'hand_collision' geom (robosuite's Panda hand); "
                              "this robot has none: set ExpertConfig.hand_clearance=False (data.expert_hand_clearance=false)")
        pos, rot = self._eef()
        return (_collision_corners(self._sim, hand) - pos) @ rot

    def _palm_limit(self, grasp_xy: np.ndarray, rot: np.ndarray, obstacles: list[np.ndarray]) -> float:
        """The lowest grip-site height at `grasp_xy` with orientation `rot` at which the palm stays
        `palm_margin` above every box of `obstacles` (world corners, (8, 3) each) under it."""
        offsets = self._hand_in_site @ rot.T  # palm corners relative to the site, world axes
        u, v = rot[:2, 0] / max(np.linalg.norm(rot[:2, 0]), 1e-9), rot[:2, 1] / max(np.linalg.norm(rot[:2, 1]), 1e-9)
        hu, hv = offsets[:, :2] @ u, offsets[:, :2] @ v
        palm_above_site = float(offsets[:, 2].min())  # the palm's lowest point, above the grip site
        limit = -math.inf
        for pts in obstacles:
            rel = pts[:, :2] - grasp_xy
            gu, gv = rel @ u, rel @ v
            if gu.max() < hu.min() or gu.min() > hu.max() or gv.max() < hv.min() or gv.min() > hv.max():
                continue  # not under the palm
            limit = max(limit, float(pts[:, 2].max()) - palm_above_site + self.cfg.palm_margin)
        return limit

    def _names_needed(self) -> list[str]:
        names = [self.object_name]
        if self.target_kind == "site":
            names.append(self._robosuite.object_sites_dict[self.target_name].parent_name)
        else:
            names.append(self.target_name)
        return names

    def _plan_grasp(self) -> None:
        cfg = self.cfg
        fp = self._footprint(self.object_name)
        pos, rot = self._eef()
        axis = np.array([fp["axis"][0], fp["axis"][1], 0.0])
        # Fingers close along the grip site's x axis; the gripper is symmetric, so pick the sign
        # needing the smaller yaw.
        if axis @ rot[:, 0] < 0:
            axis = -axis
        grasp_xy = fp["centre"].copy()
        height = fp["top"] - fp["bottom"]
        self.rim_grasp = fp["width"] > MAX_GRASP_WIDTH
        if self.rim_grasp:
            # Too wide to pinch (a bowl): put the site just inside the rim along the finger axis,
            # on the side nearest the gripper, so one finger goes inside, one outside.
            side = axis if (pos[:2] - grasp_xy) @ axis[:2] >= 0 else -axis
            grasp_xy = grasp_xy + side[:2] * (fp["width"] / 2 - RIM_INSET)
            grasp_z = fp["top"] - 0.02
        else:
            grasp_z = min(fp["top"] - cfg.grasp_depth, fp["bottom"] + cfg.grasp_max_frac * height)
        grasp_z = max(grasp_z, fp["bottom"] + FINGER_BELOW_SITE + 0.003)
        grasp_rot = np.column_stack([axis, np.cross([0.0, 0.0, -1.0], axis), [0.0, 0.0, -1.0]])
        if cfg.hand_clearance and not self.rim_grasp:
            grasp_xy, grasp_z = self._clear_grasp(fp, grasp_xy, grasp_z, grasp_rot)
        self.grasp_rot = grasp_rot
        self.grasp_xy = grasp_xy
        self.grasp_z = grasp_z
        self.hover_z = max(fp["top"] + cfg.hover, grasp_z + 0.05)
        self.obj_bottom0 = fp["bottom"]
        self._plan_place(fp, grasp_xy, grasp_z)

    def _plan_place(self, fp: dict[str, Any], grip_xy: np.ndarray, grip_z: float) -> None:
        """Carry and release heights and the place point for the object held with the grip site
        at (`grip_xy`, `grip_z`) while the object has footprint `fp`."""
        cfg = self.cfg
        self.obj_offset_xy = fp["centre"] - grip_xy  # object centre relative to the grip site
        self.grip_above_bottom = grip_z - fp["bottom"]
        resting_top = fp["top"] + (self.obj_bottom0 - fp["bottom"])  # its top where it stood (fp may be lifted)
        target_xy, floor, rim = self._target_xy_and_floor()
        self.place_xy = target_xy - self.obj_offset_xy
        self.carry_z = max(rim, resting_top) + cfg.clearance + self.grip_above_bottom
        if self.target_kind == "site":
            self.release_z = floor + cfg.release_above_floor + self.grip_above_bottom
        else:  # On: set it down gently on the target's top surface
            self.release_z = rim + 0.01 + self.grip_above_bottom
        self.carry_z = max(self.carry_z, self.hover_z)

    def holding(self) -> bool:
        """Whether both finger pads touch the object (robosuite's own grasp check)."""
        rs = self._robosuite
        return bool(rs._check_grasp(gripper=rs.robots[0].gripper, object_geoms=self._object_geom_names))

    def _follow_grasp(self, pos: np.ndarray) -> None:
        """Carry the object from the grasp the driving policy made (`ExpertConfig.follow_grasp`)."""
        self._plan_place(self._footprint(self.object_name), pos[:2].copy(), float(pos[2]))
        self._next("lift")

    def _clear_grasp(self, fp: dict[str, Any], grasp_xy: np.ndarray, grasp_z: float,
                     rot: np.ndarray) -> tuple[np.ndarray, float]:
        """The grasp point and height with the palm clear of what lies under it: the centred grasp
        at the wanted depth if the palm allows, else the nearest point along the object's long axis
        that does, else the reachable point that grasps deepest (at least `min_finger_overlap` below
        the top); if none reaches that deep, the plain plan (the descent's step budget ends it)."""
        cfg = self.cfg
        long_axis = np.array([-fp["axis"][1], fp["axis"][0]])
        reach = max(fp["length"] / 2 - 0.012, 0.0)  # keep the pads 1.2 cm inside the object's ends
        shifts = sorted({0.0, *np.round(np.arange(0.005, reach + 1e-9, 0.005), 4),
                         *np.round(-np.arange(0.005, reach + 1e-9, 0.005), 4)}, key=lambda d: (abs(d), d))
        obstacles = [_collision_corners(self._sim, [g]) for g in self._obstacle_geoms]  # the scene does not move while planning
        deepest = None
        for d in shifts:
            xy = grasp_xy + d * long_axis
            z = max(grasp_z, self._palm_limit(xy, rot, obstacles))
            if z <= grasp_z + 1e-9:
                return xy, grasp_z
            if z <= fp["top"] - cfg.min_finger_overlap and (deepest is None or z < deepest[1] - 1e-9):
                deepest = (xy, z)
        return deepest if deepest is not None else (grasp_xy, grasp_z)

    def _move(self, xyz: np.ndarray, speed: float = 1.0, rot_target: np.ndarray | None = None) -> np.ndarray:
        pos, rot = self._eef()
        a = np.zeros(7)
        v = self.cfg.pos_gain * (xyz - pos) / POS_SCALE
        if self.cfg.clip == "norm":
            a[:3] = v * min(1.0, speed / max(float(np.linalg.norm(v)), 1e-9))
        else:
            a[:3] = np.clip(v, -speed, speed)
        target = self.grasp_rot if rot_target is None else rot_target
        a[3:6] = np.clip(self.cfg.rot_gain * _axis_angle_error(target, rot) / ROT_SCALE, -1.0, 1.0)
        return a

    def _dropped(self, grip_pos: np.ndarray) -> bool:
        """Whether the carried object is no longer where the grasp holds it (more than 3 cm off the
        grip site sideways, or hanging 3 cm lower than it was grasped)."""
        fp = self._footprint(self.object_name)
        off = np.linalg.norm(fp["centre"] - (grip_pos[:2] + self.obj_offset_xy))
        return bool(off > 0.03 or fp["bottom"] < grip_pos[2] - self.grip_above_bottom - 0.03)

    def _next(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    def act(self, obs: Any = None) -> np.ndarray:
        """Action for the current simulator state (``obs`` is ignored: the expert is privileged)."""
        cfg = self.cfg
        pos, rot = self._eef()
        self._phase_steps += 1
        if cfg.recover and cfg.follow_grasp and self.phase in ("approach", "descend") and self.holding():
            self._follow_grasp(pos)
        timed_out = self._phase_steps > cfg.phase_budget
        grip = OPEN
        if self.phase == "approach":
            goal = np.array([*self.grasp_xy, self.hover_z])
            yaw_err = np.linalg.norm(_axis_angle_error(self.grasp_rot, rot))
            a = self._move(goal)
            if (np.linalg.norm(goal[:2] - pos[:2]) < cfg.xy_tol and abs(goal[2] - pos[2]) < 0.02 and yaw_err < 0.08) or timed_out:
                self._next("descend")
        elif self.phase == "descend":
            goal = np.array([*self.grasp_xy, self.grasp_z])
            a = self._move(goal, speed=0.6)
            if cfg.recover and np.linalg.norm(goal[:2] - pos[:2]) > 3 * cfg.xy_tol:
                self._next("approach")  # drifted sideways while going down: back up and re-align
            elif abs(goal[2] - pos[2]) < 0.006 or timed_out:
                self._next("close")
        elif self.phase == "close":
            a = self._move(np.array([*self.grasp_xy, self.grasp_z]), speed=0.3)
            grip = CLOSE
            if self._phase_steps >= cfg.close_steps:
                self._next("lift")
        elif self.phase == "lift":
            goal = np.array([pos[0], pos[1], self.carry_z])
            a = self._move(goal, speed=0.8)
            grip = CLOSE
            if abs(goal[2] - pos[2]) < 0.02 or timed_out:
                lifted = self._footprint(self.object_name)["bottom"] > self.obj_bottom0 + 0.03
                if lifted:
                    self._next("transport")
                elif self.attempt < cfg.max_attempts or cfg.recover:
                    self.attempt += 1
                    self._plan_grasp()
                    self._next("approach")
                else:
                    self._next("done")
        elif cfg.recover and self.phase in ("transport", "lower") and self._dropped(pos):
            self.attempt += 1  # the object fell out of the gripper: grasp it again from where it lies
            self._plan_grasp()
            self._next("approach")
            a = self._move(np.array([*self.grasp_xy, self.hover_z]))
        elif self.phase == "transport":
            goal = np.array([*self.place_xy, self.carry_z])
            a = self._move(goal)
            grip = CLOSE
            if (np.linalg.norm(goal[:2] - pos[:2]) < cfg.xy_tol * 1.5 and abs(goal[2] - pos[2]) < 0.03) or timed_out:
                self._next("lower")
        elif self.phase == "lower":
            goal = np.array([*self.place_xy, self.release_z])
            a = self._move(goal, speed=0.5)
            grip = CLOSE
            if abs(goal[2] - pos[2]) < cfg.z_tol or timed_out:
                self._next("release")
        elif self.phase == "release":
            a = self._move(np.array([*self.place_xy, self.release_z]), speed=0.2)
            if self._phase_steps >= cfg.open_steps:
                self._next("retreat")
        elif self.phase == "retreat":
            goal = np.array([pos[0], pos[1], self.carry_z])
            a = self._move(goal, speed=0.6)
            if abs(goal[2] - pos[2]) < 0.02 or timed_out:
                self._next("done")
        else:  # done: hold still, gripper open
            a = np.zeros(7)
        a[6] = grip
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def parse_goal(problem: dict) -> tuple[str, str, str, str]:
    """(predicate, object, target, "site"|"object") of a single In/On goal, or a ConfigError."""
    goal = problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0] not in ("in", "on"):
        raise ConfigError(f"scripted expert handles one (In obj region) / (On obj target) goal, got {goal}")
    predicate, obj, target = goal[0]
    regions = problem["regions"]
    if predicate == "in":
        if target not in regions:
            raise ConfigError(f"(In {obj} {target}): {target} is not a region of this task")
        return predicate, obj, target, "site"
    if target in regions:
        raise ConfigError(f"scripted expert places only onto objects, not onto the region {target!r} (goal {goal})")
    return predicate, obj, target, "object"


def run_episode(env, expert: ScriptedExpert, *, seed: int | None = None, options: dict | None = None) -> dict[str, Any]:
    """Roll the expert out for one episode; returns success, steps and the final phase."""
    env.reset(seed=seed, options=options)
    expert.reset()
    steps, success = 0, False
    while True:
        _, _, terminated, truncated, info = env.step(expert.act())
        steps += 1
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    return {"success": success, "steps": steps, "phase": expert.phase, "attempts": expert.attempt}


def measure(suite: str, task_ids: list[int], episodes: int, mode: str, camera_size: int = 0,
            config: ExpertConfig | None = None) -> dict[int, dict]:
    """Success rate of the expert per task.

    mode ``"random"``: episode e uses ``reset(seed=e, options={"init_state": "random"})`` (LIBERO's own
    placement sampler); ``"official"``: episode e loads official init state e.
    Cameras are off unless `camera_size` > 0 (the expert does not look at images).
    """
    from medvtc.robotics.libero_env import LiberoEnv

    results: dict[int, dict] = {}
    for task_id in task_ids:
        cams = ("agentview", "wrist") if camera_size > 0 else ()
        env = LiberoEnv(suite, task_id, cameras=cams, camera_size=max(camera_size, 1))
        try:
            expert = ScriptedExpert(env, config)
            runs = []
            for e in range(episodes):
                if mode == "random":
                    runs.append(run_episode(env, expert, seed=e, options={"init_state": "random"}))
                else:
                    runs.append(run_episode(env, expert, options={"init_state_id": e % env.num_init_states}))
            ok = [r for r in runs if r["success"]]
            results[task_id] = {
                "task": env.task_name,
                "success_rate": len(ok) / len(runs),
                "episodes": len(runs),
                "mean_steps_success": float(np.mean([r["steps"] for r in ok])) if ok else None,
                "retried": sum(r["attempts"] > 1 for r in runs),
                "failures": [(i, r["phase"], r["attempts"]) for i, r in enumerate(runs) if not r["success"]],
            }
            print(f"{suite} task {task_id} ({env.task_name}): {results[task_id]['success_rate']:.0%} "
                  f"over {len(runs)} {mode} episodes, mean steps {results[task_id]['mean_steps_success']}, "
                  f"grasp retried in {results[task_id]['retried']}, "
                  f"failures {results[task_id]['failures']}", flush=True)
        finally:
            env.close()
    return results


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="Measure the scripted LIBERO expert's success rate per task.")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0-9", help="task ids: '0-9' or '0,3,5'")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--mode", choices=("random", "official"), default="random")
    p.add_argument("--camera-size", type=int, default=0, help="render cameras too (0: off, fastest)")
    p.add_argument("--clip", choices=("axis", "norm"), default="axis", help="the expert's velocity limit (ExpertConfig.clip)")
    p.add_argument("--no-hand-clearance", action="store_true", help="the grasp plan before ExpertConfig.hand_clearance")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    config = ExpertConfig(clip=args.clip, hand_clearance=not args.no_hand_clearance)
    if "-" in args.tasks:
        lo, hi = (int(v) for v in args.tasks.split("-"))
        task_ids = list(range(lo, hi + 1))
    else:
        task_ids = [int(v) for v in args.tasks.split(",")]
    results = measure(args.suite, task_ids, args.episodes, args.mode, args.camera_size, config)
    rates = [r["success_rate"] for r in results.values()]
    print(f"mean success over {len(rates)} tasks: {np.mean(rates):.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"suite": args.suite, "mode": args.mode, "results": results}, f, indent=2)


if __name__ == "__main__":
    _main()
