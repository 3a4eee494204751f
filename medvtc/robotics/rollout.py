"""Closed-loop evaluation of a trained LeRobot policy in the LIBERO simulator.

    from medvtc.robotics.rollout import load_policy, run_rollouts
    policy, pre, post = load_policy("runs/libero/final")
    results = run_rollouts(policy, pre, post, suite="libero_object", task_ids=[0, 1, 2], episodes=10)

    # several environments in parallel processes, mp4 videos of the first 2 episodes per task
    results = run_rollouts(policy, pre, post, suite="libero_object", task_ids=[0, 1, 2], episodes=10,
                           num_envs=2, checkpoint="runs/libero/final", video_dir="videos", video_episodes=2)

Episode e of a task starts from LIBERO's official initial state e (the benchmark's evaluation
protocol: 50 fixed states per task), so results are comparable across methods and runs. The loop
is the LeRobot one: raw observation -> preprocessor -> `policy.select_action` (action chunks are
queued inside the policy) -> postprocessor -> `env.step`, with `policy.reset()` at each episode
start. Torch's RNG is seeded per (task, init state), so an episode gives the same result however
the episodes are spread over processes.

`num_envs > 1` runs the (task, init state) episodes in a pool of `num_envs` worker processes
(spawned: MuJoCo's GL contexts and torch do not survive a fork), each with its own copy of the
policy loaded from `checkpoint` and one environment per task, so rendering, physics and policy
inference use that many cores. Policies: Compressor-VLA (`compressor_vla`) and LeRobot's ACT
(`act`), in LeRobot's saved layout.

Any suite the installed LIBERO registers can be rolled out, LIBERO-PRO's perturbed ones
(``libero_object_swap``, ``libero_object_lan``, ...) included. Before the episodes run, each task
is matched to the policy's training tasks (`training_tasks`: what the checkpoint's training data
says; `match_training_tasks`: by BDDL file name, goal, instruction and scene), printed one line
per task and kept in the results: the same task, a perturbed version of training task k (which
changes), a training task's goal elsewhere, or unseen.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import ConfigError, UserError

POLICY_TYPE = "compressor_vla"
POLICY_TYPES = ("compressor_vla", "act")  # what `medvtc train --task libero` writes (policy.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A trained policy folder: `path` itself or `path/final`; UserError for anything else,
    including a checkpoint of another task (no LeRobot `config.json` of a LIBERO policy type)."""
    path = Path(path)
    candidates = [path / "final", path]
    for cand in candidates:
        cfg_file = cand / "config.json"
        if cfg_file.is_file():
            try:
                kind = json.loads(cfg_file.read_text()).get("type")
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"cannot read {cfg_file}: {e}") from None
            if kind not in POLICY_TYPES:
                raise UserError(
                    f"{cand} holds a {kind!r} model, not a LIBERO policy ({' or '.join(POLICY_TYPES)}; "
                    "a checkpoint of another task?)"
                )
            if not (cand / "model.safetensors").is_file():
                raise UserError(f"{cand} has a config.json but no model.safetensors")
            return cand
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    raise UserError(
        f"{path} is not a trained LIBERO policy: expected config.json + model.safetensors in it or in {path / 'final'} "
        "(a checkpoint of another task, or a run that has not finished?)"
    )


def load_policy(path: str | Path, device: str | None = None):
    """(policy, preprocessor, postprocessor) from a folder written by `medvtc train --task libero`
    (Compressor-VLA or LeRobot's ACT: the class comes from the saved config's type)."""
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    import medvtc.robotics.policies.compressor_vla  # noqa: F401  registers the compressor_vla type

    folder = resolve_checkpoint(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.device = device
    if getattr(cfg, "pretrained_backbone_weights", None) is not None:
        cfg.pretrained_backbone_weights = None  # ACT: the saved weights replace them; never download
    policy = get_policy_class(cfg.type).from_pretrained(folder, config=cfg)
    policy.eval()
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=str(folder),
        preprocessor_overrides={"device_processor": {"device": device}, "normalizer_processor": {"device": device}},
    )
    return policy, pre, post


def policy_cameras(config: Any) -> tuple[str, ...]:
    """The env cameras a policy reads, in its image-feature order; UserError for inputs the LIBERO
    env does not give (a policy trained on another robot)."""
    from medvtc.robotics.demonstrations import ACTION_DIM, CAMERA_TO_KEY, STATE_DIM, STATE_KEY

    key_to_cam = {v: k for k, v in CAMERA_TO_KEY.items()}
    images = list(config.image_features)
    unknown = [k for k in images if k not in key_to_cam]
    state = config.input_features.get(STATE_KEY) if config.input_features else None
    action = config.output_features.get("action") if config.output_features else None
    problems = []
    if unknown or not images:
        problems.append(f"image inputs {unknown or '(none)'} (the env gives {sorted(key_to_cam)})")
    if state is not None and tuple(state.shape) != (STATE_DIM,):
        problems.append(f"a {tuple(state.shape)} state (the env gives ({STATE_DIM},))")
    if action is None or tuple(action.shape) != (ACTION_DIM,):
        problems.append(f"actions of shape {None if action is None else tuple(action.shape)} (the env takes ({ACTION_DIM},))")
    extra = [k for k in (config.input_features or {}) if k not in images and k != STATE_KEY]
    if extra:
        problems.append(f"inputs {extra} the env does not give")
    if problems:
        raise UserError("this policy does not fit the LIBERO environment: it expects " + "; ".join(problems))
    return tuple(key_to_cam[k] for k in images)


def check_rollout_args(suite: str, task_ids: Sequence[int], episodes: int, num_envs: int = 1,
                       video_episodes: int = 0, max_episode_steps: int | None = None):
    """Validate a rollout before anything runs or is written; returns the LIBERO suite object.

    Any suite the installed LIBERO registers is accepted (LIBERO-PRO's perturbed ones included, see
    `libero_env.available_suites`). Unknown suite or task id: a ConfigError listing the valid ones;
    a registered suite whose BDDL / initial-state files are not installed, or one without a
    default episode limit when none is given: a ConfigError saying so."""
    from medvtc.robotics.libero_env import check_suite_files, load_suite, suite_max_steps

    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise UserError(f"num_envs must be >= 1, got {num_envs}")
    if video_episodes < 0:
        raise UserError(f"video_episodes must be >= 0, got {video_episodes}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise UserError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    bench = load_suite(suite)  # an unknown suite: ConfigError listing the valid ones
    n_tasks = bench.get_num_tasks()
    bad = [t for t in task_ids if not 0 <= int(t) < n_tasks]
    if bad or not task_ids:
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(bench.get_task_names()))
        raise ConfigError(f"task id {bad[0] if bad else '(none given)'} is not in suite {suite!r}: valid ids are "
                          f"0..{n_tasks - 1}:\n{names}")
    if len(set(int(t) for t in task_ids)) != len(task_ids):
        raise ConfigError(f"task ids repeat: {list(task_ids)}")
    check_suite_files(suite, [int(t) for t in task_ids])
    if max_episode_steps is None and suite_max_steps(suite) is None:
        raise ConfigError(f"suite {suite!r} has no default episode limit; give one (--max-episode-steps N)")
    return bench


# ----------------------------------------------------------------------------- training tasks

RECORDING_COPY = "medvtc_recording.json"  # a copy of the dataset's meta/medvtc_recording.json beside the policy
SELECTION_FILE = "medvtc_selection.json"  # which step's weights the policy is, when chosen by validation rollouts


def _find_dataset(root: str, folder: Path) -> Path | None:
    """data.root as the training run saw it: absolute, or relative to the working directory (of this
    process, or of the run: tried from the checkpoint's folders upwards)."""
    path = Path(root).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + [d / path for d in folder.resolve().parents]
    return next((c for c in candidates if (c / "meta" / "info.json").is_file()), None)


def _recorded_tasks(summary: dict[str, Any], source: str) -> dict[str, Any]:
    tasks = [{"task_id": int(t["task_id"]), "task": t.get("task"), "instruction": t["instruction"]}
             for t in summary.get("tasks", []) if int(t.get("successes", 1)) > 0]  # no episode: not trained on
    return {"source": source, "suite": summary.get("suite"), "tasks": tasks}


def training_tasks(checkpoint: str | Path) -> dict[str, Any]:
    """The tasks a policy was trained on: ``{"source", "suite", "tasks": [{"task_id", "task",
    "instruction"}]}`` (``suite``/``task_id``/``task`` None where only instructions are known;
    ``source`` None and no tasks when nothing says).

    Looked up, first found wins: a copy of the recording summary beside the policy
    (``medvtc_recording.json``); the training dataset named by the saved config's ``data.root``:
    its ``meta/medvtc_recording.json`` (a `medvtc data` recording: suite, task ids and
    instructions of the tasks with at least one episode) or else its ``meta/tasks.parquet`` (any
    LeRobotDataset, the real LIBERO ones included: the instructions); last, the saved config's
    ``data.suite`` / ``data.tasks`` (what `medvtc data` records into data.root), marked as such.
    """
    try:
        return _training_tasks(Path(checkpoint))
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged record must not stop a rollout
        return {"source": None, "suite": None, "tasks": [], "error": f"{type(e).__name__}: {e}"}


def _training_tasks(folder: Path) -> dict[str, Any]:
    import yaml

    copy = folder / RECORDING_COPY
    if copy.is_file():
        return _recorded_tasks(json.loads(copy.read_text()), str(copy))
    cfg_file = next((f for f in (folder / "medvtc_config.yaml", folder.parent / "config.yaml") if f.is_file()), None)
    data = {}
    if cfg_file is not None:
        try:
            data = (yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}
        except (OSError, yaml.YAMLError):
            data = {}
    root = _find_dataset(str(data["root"]), folder) if data.get("root") else None
    if root is not None:
        rec = root / "meta" / "medvtc_recording.json"
        if rec.is_file():
            return _recorded_tasks(json.loads(rec.read_text()), str(rec))
        tasks_file = root / "meta" / "tasks.parquet"
        if tasks_file.is_file():
            import pandas as pd

            df = pd.read_parquet(tasks_file)
            if "task_index" in df.columns:
                df = df.sort_values("task_index")
            names = list(df["task"]) if "task" in df.columns else list(df.index)
            return {"source": str(tasks_file), "suite": None,
                    "tasks": [{"task_id": None, "task": None, "instruction": str(n)} for n in names]}
    if data.get("suite") and data.get("tasks") is not None:
        from medvtc.robotics.libero_env import load_suite

        try:
            bench = load_suite(str(data["suite"]))
            tasks = [{"task_id": int(t), "task": bench.get_task(int(t)).name, "instruction": bench.get_task(int(t)).language}
                     for t in data["tasks"]]
        except (ConfigError, IndexError, TypeError, ValueError):
            tasks = []
        if tasks:
            return {"source": f"{cfg_file} data.suite/data.tasks (the dataset at data.root={data['root']} was not found)",
                    "suite": str(data["suite"]), "tasks": tasks}
    return {"source": None, "suite": None, "tasks": []}


def _resolve(task: dict[str, Any], suite: str | None, prefer: Sequence[str]) -> dict[str, Any] | None:
    """The BDDL facts (`task_bddl`) of a training task: by suite and id, else by name in `suite`, else
    the standard-suite task whose LIBERO language is its instruction (a LeRobot LIBERO dataset)."""
    from medvtc.robotics.libero_env import load_suite, normalize_instruction, task_bddl

    def find(s: str, key: str, value: str) -> dict[str, Any] | None:
        try:
            bench = load_suite(s)
        except ConfigError:
            return None
        for k in range(bench.get_num_tasks()):
            t = bench.get_task(k)
            got = t.name if key == "name" else normalize_instruction(t.language)
            if got == value:
                return task_bddl(s, k)
        return None

    if suite is not None and task.get("task_id") is not None:
        try:
            info = task_bddl(suite, int(task["task_id"]))
        except (ConfigError, IndexError):
            info = None
        if info is not None and task.get("task") in (None, info["name"]):
            return info
        if task.get("task"):
            return find(suite, "name", task["task"])
        return None
    wanted = normalize_instruction(task["instruction"])
    for s in dict.fromkeys(prefer):
        info = find(s, "language", wanted)
        if info is not None:
            return info
    return None


def _renaming(k: dict[str, Any], t: dict[str, Any]) -> dict[str, str] | None:
    """The renaming of objects that turns training task `k`'s BDDL into `t`'s, or None if there is none.

    LIBERO-PRO's object replacement renames declared objects (``basket_1`` -> ``red_basket_1``)
    and their types (``plate`` -> ``yellow_plate``), and so the regions named after either
    (``basket_1_contain_region``, ``main_table_plate_region``), everywhere but in the instruction. Any other token that changes (a region, a predicate: a new goal), a name
    that is not new, or a file of another length, and it is not a renaming.
    """
    a, b = k["tokens"], t["tokens"]
    if a is None or b is None or len(a) != len(b):
        return None
    mapping: dict[str, str] = {}
    for x, y in zip(a, b):
        if mapping.setdefault(x, y) != y:
            return None
    renamed = {x: y for x, y in mapping.items() if x != y}
    if any(y in mapping for y in renamed.values()) or len(set(renamed.values())) != len(renamed):
        return None
    names = {o: renamed[o] for o in (*k["objects"], *k["objects"].values()) if o in renamed}  # objects and types
    for x, y in renamed.items():
        if x not in names and not any(o in x and x.replace(o, n) == y for o, n in names.items()):
            return None
    return mapping


def _same_goal(t: dict[str, Any], k: dict[str, Any]) -> bool:
    """Same ``(:goal ...)``, or the goal of `k` with objects renamed (`_renaming`)."""
    if t["goal"] is None or k["goal"] is None:
        return False
    return t["goal"].lower() == k["goal"].lower() or _renaming(k, t) is not None


def _scene_changes(t: dict[str, Any], k: dict[str, Any]) -> list[str]:
    """How task `t`'s BDDL differs from training task `k`'s besides the instruction ([] if it does not)."""
    if t["tokens"] == k["tokens"]:
        return []
    renamed = _renaming(k, t)
    if renamed is not None:
        objects = [f"{a} -> {b}" for a, b in renamed.items() if a != b and a in k["objects"]]
        return [f"objects replaced ({', '.join(objects)})"]
    if t["tokens_without_init"] is not None and t["tokens_without_init"] == k["tokens_without_init"]:
        return ["objects start elsewhere"]
    return ["scene changed"]


def match_training_tasks(suite: str, task_ids: Sequence[int], training: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Which training task each of `suite`'s `task_ids` corresponds to, from the BDDL files.

    LIBERO-PRO perturbs a task by rewriting its BDDL file under the same file name in a suite named
    ``<base suite>_<kind>``: ``_swap`` moves objects, ``_object`` replaces them (renamed everywhere
    but the instruction), ``_lan`` rewords the instruction, ``_task`` changes the goal; the
    ``_with_<thing>`` suites add a distractor to scenes of their own. So a task is compared with
    each training task by file name, goal (up to such renaming), instruction and the rest of the
    file. Per task id: ``relation`` (``same``: the training task itself; ``perturbed``: same file
    name and goal, ``changes`` lists what differs; ``same_goal``: a training task's goal and
    instruction in another scene; ``same_instruction`` / ``same_problem``: only an instruction / a
    file name matched a training task whose BDDL is unknown; ``unseen``; ``unknown``: no training
    tasks recorded),
    ``training_task`` (suite, task_id, task, instruction of the match, or None), ``scene_of``
    (the training task whose file this task rewrites, if any), ``changes``, ``instruction`` (what
    the policy will be told) and a one-line ``description``.
    """
    from medvtc.robotics.libero_env import STANDARD_SUITES, base_suite, normalize_instruction, task_bddl, task_instruction

    prefer = [s for s in (base_suite(suite), *STANDARD_SUITES) if s]
    trained = []
    for t in training.get("tasks", []):
        info = _resolve(t, training.get("suite"), prefer)
        entry = {"suite": info["suite"] if info else training.get("suite"),
                 "task_id": info["task_id"] if info else t.get("task_id"),
                 "task": info["name"] if info else t.get("task"), "instruction": t["instruction"]}
        trained.append((entry, info))

    def label(entry: dict[str, Any]) -> str:
        if entry["suite"] is not None and entry["task_id"] is not None:
            return f"training task {entry['suite']}/{entry['task_id']}"
        return f"the training task {entry['instruction']!r}"

    out: dict[int, dict[str, Any]] = {}
    for tid in task_ids:
        t = task_bddl(suite, int(tid))
        instruction = task_instruction(suite, int(tid))
        t_instr = normalize_instruction(instruction)
        res: dict[str, Any] = {"relation": "unseen", "training_task": None, "scene_of": None, "changes": [],
                               "instruction": instruction}
        same_name = [(e, i) for e, i in trained if i is not None and i["name"] == t["name"]]
        scene = same_name[0] if same_name else None
        if scene is not None:
            res["scene_of"] = scene[0]
        if not trained:
            res["relation"] = "unknown"
            res["description"] = "unknown (the checkpoint does not record its training tasks)"
        elif scene is not None and _same_goal(t, scene[1]):
            entry, info = scene
            changes = _scene_changes(t, info)
            if t_instr != normalize_instruction(entry["instruction"]):
                changes.append(f"instruction reworded, was {entry['instruction']!r}")
            res.update(relation="perturbed" if changes else "same", training_task=entry, changes=changes)
            res["description"] = (f"perturbed version of {label(entry)}: {'; '.join(changes)}" if changes
                                  else f"{label(entry)} (same task)")
        else:
            goals = [e for e, i in trained if i is not None and _same_goal(t, i)]
            told = [e for e in goals if normalize_instruction(e["instruction"]) == t_instr]
            by_instr = [e for e, i in trained if i is None and normalize_instruction(e["instruction"]) == t_instr]
            by_name = [e for e, i in trained if i is None and normalize_instruction(e["instruction"])
                       == normalize_instruction(t["language"])]
            where = f"the scene of {label(scene[0])}" if scene is not None else "another scene"
            if told:
                res.update(relation="same_goal", training_task=told[0], changes=["other scene"])
                res["description"] = f"same goal and instruction as {label(told[0])}, in {where}"
            elif by_instr:
                res.update(relation="same_instruction", training_task=by_instr[0])
                res["description"] = f"same instruction as {label(by_instr[0])} (its BDDL file is unknown)"
            elif by_name:
                res.update(relation="same_problem", training_task=by_name[0], changes=["instruction reworded"])
                res["description"] = (f"same problem (BDDL file name) as {label(by_name[0])} (its BDDL file is unknown), "
                                      "instruction reworded")
            elif scene is not None:
                res["description"] = f"unseen: a new goal in the scene of {label(scene[0])}"
            elif goals:
                res["description"] = f"unseen: the goal predicate of {label(goals[0])} in another scene, told otherwise"
            else:
                res["description"] = "unseen"
        out[int(tid)] = res
    return out


def format_correspondence(suite: str, training: dict[str, Any], matches: dict[int, dict[str, Any]]) -> list[str]:
    """The lines printed before a rollout: where the training tasks come from, then one per task."""
    if training.get("source") is None:
        why = training.get("error") or "no dataset or config found"
        head = f"medvtc: the checkpoint does not record its training tasks ({why})"
    else:
        ids = [t["task_id"] for t in training["tasks"]]
        what = (f"{training['suite']} tasks {', '.join(str(i) for i in ids)}" if training.get("suite") and None not in ids
                else f"{len(ids)} instructions")
        head = f"medvtc: policy trained on {what} (from {training['source']})"
    lines = [head]
    for tid, m in matches.items():
        lines.append(f"  {suite} task {tid} {m['instruction']!r}: {m['description']}")
    return lines


def episode_seed(task_id: int, init_state_id: int) -> int:
    """Torch seed of one episode (random compressors, dropout-free sampling): the same in any process."""
    return int(np.random.SeedSequence([int(task_id), int(init_state_id)]).generate_state(1)[0])


def video_name(suite: str, task_id: int, init_state_id: int) -> str:
    return f"{suite}_task{int(task_id)}_init{int(init_state_id):02d}.mp4"


def queued_actions(policy) -> int | None:
    """Actions left in the policy's queue (its current chunk), or None when the policy reads
    every observation (ACT with temporal ensembling) or keeps no such queue."""
    queue = getattr(policy, "_action_queue", None)
    if queue is None or getattr(policy.config, "temporal_ensemble_coeff", None) is not None:
        return None
    return len(queue)


def run_episode(env, policy, pre, post, init_state_id: int | None, *, seed: int | None = None,
                video_path: str | Path | None = None, cameras: Sequence[str] = ("agentview", "wrist"),
                scene_seed: int | None = None, render_every_step: bool = False) -> dict[str, Any]:
    """One closed-loop episode from official init state `init_state_id`, or, when it is None, from
    LIBERO's random placement drawn with reset seed `scene_seed` (held-out validation scenes);
    with `video_path`, an mp4 of the episode with the kept visual tokens drawn over the frames.

    A policy that executes a queued action chunk reads an observation only when its queue is
    empty: the steps in between are taken without rendering the cameras (`env.skip_cameras`)
    and without preprocessing, which changes nothing in the episode (rendering does not touch
    the physics) and saves most of its time on a CPU. `render_every_step` (or a video) renders
    and preprocesses every step, as a policy that reads every observation needs."""
    import torch

    from medvtc.robotics.demonstrations import observation_to_batch

    if seed is not None:
        torch.manual_seed(seed)
    if init_state_id is None:
        if scene_seed is None:
            raise ValueError("run_episode: give init_state_id (an official state) or scene_seed (a random scene)")
        obs, info = env.reset(seed=int(scene_seed), options={"init_state": "random"})
    else:
        obs, info = env.reset(options={"init_state_id": init_state_id})
    policy.reset()
    recorder = None
    if video_path is not None:
        from medvtc.robotics.token_video import EpisodeRecorder

        caption = f"task {env.task_id} init {init_state_id if init_state_id is not None else f'seed {scene_seed}'}"
        recorder = EpisodeRecorder(video_path, policy, cameras=cameras, caption=caption,
                                   fps=env.metadata.get("render_fps", 20))
    steps, success, t_policy, ok = 0, False, 0.0, False
    lazy = not render_every_step and recorder is None and queued_actions(policy) is not None and hasattr(env, "skip_cameras")
    try:
        while True:
            t0 = time.perf_counter()
            with torch.inference_mode():
                if lazy and queued_actions(policy):  # the rest of the chunk: no observation read
                    action = post(policy.select_action({}))
                else:
                    action = post(policy.select_action(pre(observation_to_batch(obs, env.instruction))))
            t_policy += time.perf_counter() - t0
            if recorder is not None:
                recorder.add(obs, steps)
            if lazy:  # render the next observation only if the policy will read it
                env.skip_cameras = bool(queued_actions(policy))
            obs, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32).reshape(-1))
            steps += 1
            if terminated or truncated:
                success = bool(info["is_success"])
                break
        if recorder is not None:
            recorder.add(obs, steps)
        ok = True
    finally:
        if lazy:
            env.skip_cameras = False
        if recorder is not None:
            recorder.close(keep=ok)
    state = np.asarray(obs["state"], dtype=np.float64)
    out = {"init_state_id": None if init_state_id is None else int(init_state_id), "success": success, "steps": steps,
           "policy_ms_per_step": 1000 * t_policy / max(steps, 1), "final_state": [round(float(v), 6) for v in state]}
    if video_path is not None:
        out["video"] = str(video_path)
    return out


# ----------------------------------------------------------------------------- worker processes

_WORKER: dict[str, Any] = {}


def _worker_init(checkpoint: str, device: str | None, threads: int, env_kwargs: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    policy, pre, post = load_policy(checkpoint, device=device)
    _WORKER.clear()
    _WORKER.update(policy=policy, pre=pre, post=post, env=None, env_task=None, env_kwargs=env_kwargs)


def _worker_episode(job: tuple[int, int, str | None]) -> dict[str, Any]:
    from medvtc.robotics.libero_env import LiberoEnv

    tid, init_state_id, video = job
    w = _WORKER
    if w["env_task"] != tid:
        if w["env"] is not None:
            w["env"].close()
            w["env"] = None
        kw = dict(w["env_kwargs"])
        suite = kw.pop("suite")
        w["env"] = LiberoEnv(suite, tid, **kw)
        w["env_task"] = tid
    return run_episode(w["env"], w["policy"], w["pre"], w["post"], init_state_id,
                       seed=episode_seed(tid, init_state_id), video_path=video, cameras=w["env_kwargs"]["cameras"])


class EpisodeJournal:
    """The finished episodes of one evaluation, one JSON line each, appended as they end, so that a
    killed evaluation resumes after its last finished episode instead of from the first: an episode
    is deterministic (its official init state and `episode_seed`), so the resumed results are the
    uninterrupted ones. The first line is the key (everything the episodes depend on, the weights'
    size and mtime included); a journal with another key is started afresh, and a line torn by a
    kill mid-write is ignored. Written by hand: a few lines of JSON needed no library."""

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, default=str))

    def load(self) -> dict[tuple[int, int], dict[str, Any]]:
        """{(task, init state): episode result} of the episodes already run under this key."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text().splitlines()
        try:
            if not lines or json.loads(lines[0]).get("key") != self.key:
                return {}
        except json.JSONDecodeError:
            return {}
        done = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                done[(int(rec["task"]), int(rec["init_state"]))] = rec["result"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # torn by a kill while it was written
        return done

    def start(self, done: dict[tuple[int, int], dict[str, Any]]) -> None:
        """Rewrite the journal with this key and the episodes kept (drops other keys and torn lines)."""
        from medvtc.common.io import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            with open(tmp, "w") as f:
                f.write(json.dumps({"key": self.key}) + "\n")
                for (tid, k), res in done.items():
                    f.write(json.dumps({"task": tid, "init_state": k, "result": res}) + "\n")

    def append(self, task_id: int, init_state_id: int, result: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"task": int(task_id), "init_state": int(init_state_id), "result": result}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def run_rollouts(
    policy, pre, post, *, suite: str, task_ids: Sequence[int], episodes: int, camera_size: int | None = None,
    max_episode_steps: int | None = None, first_init_state: int = 0, progress: bool = True, num_envs: int = 1,
    checkpoint: str | Path | None = None, device: str | None = None, video_dir: str | Path | None = None,
    video_episodes: int = 0, training: dict[str, Any] | None = None, journal: str | Path | None = None,
) -> dict[str, Any]:
    """Success per task and overall over `episodes` official init states per task.

    num_envs > 1: episodes run in that many worker processes, each loading the policy from
    `checkpoint` (required then) on `device` (default: CUDA if available). video_dir /
    video_episodes: mp4s of the first `video_episodes` episodes of every task, named
    `<suite>_task<t>_init<k>.mp4`, with the kept tokens drawn over the frames.

    The policy's training tasks (`training`, default: `training_tasks(checkpoint)` when a checkpoint
    is given) are matched to the suite's tasks (`match_training_tasks`); one line per task is
    printed before anything runs, and the results hold ``training_tasks`` and, per task,
    ``training_task`` (the match).

    journal: a file (`EpisodeJournal`) where each finished episode is kept as it ends; a rollout
    stopped part-way and started again with the same arguments and weights (`checkpoint` is
    required) runs only the episodes not in it. ``resumed_episodes`` in the results counts them.
    """
    from tqdm.auto import tqdm

    from medvtc.robotics.libero_env import LiberoEnv, task_instruction

    task_ids = [int(t) for t in task_ids]
    bench = check_rollout_args(suite, task_ids, episodes, num_envs, video_episodes if video_dir else 0,
                               max_episode_steps)
    cams = policy_cameras(policy.config)
    if num_envs > 1 and checkpoint is None:
        raise ValueError("num_envs > 1 needs `checkpoint`: the worker processes load the policy from it")
    if training is None and checkpoint is not None:
        training = training_tasks(checkpoint)
    matches = match_training_tasks(suite, task_ids, training) if training is not None else None
    if matches is not None:
        print("\n".join(format_correspondence(suite, training, matches)), flush=True)
    shape = next(iter(policy.config.image_features.values())).shape
    size = camera_size or int(shape[-1])
    env_kwargs = {"suite": suite, "camera_size": size, "cameras": cams, "max_episode_steps": max_episode_steps}
    jobs = []
    for tid in task_ids:
        n_states = len(bench.get_task_init_states(tid))
        for e in range(episodes):
            k = (first_init_state + e) % n_states
            video = str(Path(video_dir) / video_name(suite, tid, k)) if video_dir and e < video_episodes else None
            jobs.append((tid, k, video))

    by_job: list[dict[str, Any] | None] = [None] * len(jobs)
    book = None
    if journal is not None:
        if checkpoint is None:
            raise ValueError("a rollout journal needs `checkpoint`: its key names the weights the episodes were run with")
        weights = sorted(Path(checkpoint).glob("*.safetensors"))
        book = EpisodeJournal(journal, {
            "suite": suite, "tasks": task_ids, "episodes": episodes, "first_init_state": first_init_state,
            "max_episode_steps": max_episode_steps, "env": env_kwargs, "videos": [j[2] for j in jobs],
            "weights": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in weights]})
        kept = book.load()
        for i, (tid, k, _) in enumerate(jobs):
            by_job[i] = kept.get((tid, k))
        book.start({(tid, k): r for (tid, k, _), r in zip(jobs, by_job) if r is not None})
    resumed = sum(r is not None for r in by_job)
    todo = [i for i, r in enumerate(by_job) if r is None]
    bar = tqdm(total=len(jobs), initial=resumed, desc=f"rollout {suite}", unit="episode", disable=not progress,
               dynamic_ncols=True)

    def done(i: int, res: dict[str, Any]) -> None:
        by_job[i] = res
        if book is not None:
            book.append(jobs[i][0], jobs[i][1], res)
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([r['success'] for r in by_job if r is not None]):.0%}")

    t0 = time.perf_counter()
    try:
        if num_envs <= 1:
            env, env_task = None, None
            try:
                for i in todo:
                    tid, k, video = jobs[i]
                    if env_task != tid:
                        if env is not None:
                            env.close()
                        env = LiberoEnv(suite, tid, camera_size=size, cameras=cams, max_episode_steps=max_episode_steps)
                        env_task = tid
                    done(i, run_episode(env, policy, pre, post, k, seed=episode_seed(tid, k), video_path=video,
                                          cameras=cams))
            finally:
                if env is not None:
                    env.close()
        else:
            import multiprocessing as mp
            from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

            workers = max(1, min(num_envs, len(todo)))
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(str(checkpoint), device, threads, env_kwargs)) as pool:
                futures = {pool.submit(_worker_episode, jobs[i]): i for i in todo}
                pending = set(futures)
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for f in finished:
                            done(futures[f], f.result())  # re-raises a worker's exception
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
    finally:
        bar.close()
    results: dict[str, Any] = {"suite": suite, "episodes_per_task": episodes, "first_init_state": first_init_state,
                               "max_episode_steps": max_episode_steps or env_limit(suite), "num_envs": num_envs,
                               "tasks": {}}
    if training is not None:
        results["training_tasks"] = training
    for tid in task_ids:
        task = bench.get_task(tid)
        eps = [r for (t, _, _), r in zip(jobs, by_job) if t == tid]
        results["tasks"][tid] = {
            "task": task.name, "instruction": task_instruction(suite, tid),
            "success_rate": float(np.mean([r["success"] for r in eps])), "episodes": eps,
        }
        if matches is not None:
            results["tasks"][tid]["training_task"] = matches[tid]
    rates = [t["success_rate"] for t in results["tasks"].values()]
    results["success_rate"] = float(np.mean(rates))
    results["wall_s"] = round(time.perf_counter() - t0, 2)
    if book is not None:
        results["resumed_episodes"] = resumed
    return results


def validation_seed(seed: int, task_id: int, episode: int) -> int:
    """Reset seed of validation episode `episode` of `task_id`: a stream apart from the recording's
    (`demonstrations.attempt_seed` draws from [seed, task, attempt]; this one adds a tag)."""
    return int(np.random.SeedSequence([int(seed), int(task_id), int(episode), VALIDATION_TAG]).generate_state(1)[0])


VALIDATION_TAG = 0x76616C  # "val"


def validation_scenes(seed: int, task_ids: Sequence[int], episodes: int,
                      exclude: dict[int, set[int]] | None = None) -> list[tuple[int, int]]:
    """(task, reset seed) of `episodes` held-out random scenes per task, skipping any reset seed in
    `exclude[task]` (the scenes the demonstrations were recorded from)."""
    jobs = []
    for tid in task_ids:
        taken, e = (exclude or {}).get(int(tid), set()), 0
        for _ in range(episodes):
            while validation_seed(seed, tid, e) in taken:
                e += 1
            jobs.append((int(tid), validation_seed(seed, tid, e)))
            e += 1
    return jobs


def validation_rollouts(policy, pre, post, *, suite: str, scenes: Sequence[tuple[int, int]], camera_size: int,
                        robot_init_noise: float = 0.0, max_episode_steps: int | None = None) -> dict[str, float]:
    """Success on held-out random scenes (never LIBERO's official initial states, the test set),
    for checkpoint selection during training: {"val_success": overall, "val_success_task_<t>": ...}.
    `robot_init_noise` (rad) noises the arm at each reset, as the official states are noised."""
    from medvtc.robotics.demonstrations import set_robot_init_noise
    from medvtc.robotics.libero_env import LiberoEnv

    cams = policy_cameras(policy.config)
    was_training = policy.training
    policy.eval()  # ACT's VAE encoder runs only in training mode; restored below
    successes: dict[int, list[bool]] = {}
    env, env_task = None, None
    try:
        for tid, scene in scenes:
            if env_task != tid:
                if env is not None:
                    env.close()
                env = LiberoEnv(suite, tid, camera_size=camera_size, cameras=cams, max_episode_steps=max_episode_steps)
                if robot_init_noise > 0:
                    set_robot_init_noise(env, robot_init_noise)
                env_task = tid
            res = run_episode(env, policy, pre, post, None, seed=episode_seed(tid, scene), scene_seed=scene,
                              cameras=cams)  # runs the policy under inference_mode itself
            successes.setdefault(tid, []).append(bool(res["success"]))
    finally:
        if env is not None:
            env.close()
        policy.train(was_training)
    out = {f"val_success_task_{t}": float(np.mean(v)) for t, v in successes.items()}
    out["val_success"] = float(np.mean([s for v in successes.values() for s in v]))
    return out


def env_limit(suite: str) -> int | None:
    from medvtc.robotics.libero_env import suite_max_steps

    return suite_max_steps(suite)


def format_results(results: dict[str, Any]) -> str:
    lines = [f"{results['suite']}: {results['episodes_per_task']} episodes per task on the official initial states"]
    for tid, t in results["tasks"].items():
        ms = np.mean([r["policy_ms_per_step"] for r in t["episodes"]])
        match = t.get("training_task")
        seen = ""
        if match is not None and match["relation"] != "unknown":
            k = match["training_task"]
            seen = f"  [{match['relation']}" + (f" {k['suite']}/{k['task_id']}" if k and k.get("suite") else "") + "]"
        lines.append(f"  task {tid}: success {t['success_rate']:.0%}  ({ms:.1f} ms policy per step) - {t['instruction']}{seen}")
    lines.append(f"  overall success: {results['success_rate']:.1%}")
    videos = [r["video"] for t in results["tasks"].values() for r in t["episodes"] if "video" in r]
    if videos:
        lines.append(f"  videos: {len(videos)} in {Path(videos[0]).parent}")
    return "\n".join(lines)


__all__ = [
    "POLICY_TYPES", "check_rollout_args", "episode_seed", "format_correspondence", "format_results", "load_policy",
    "match_training_tasks", "policy_cameras", "resolve_checkpoint", "run_episode", "run_rollouts", "training_tasks",
]
