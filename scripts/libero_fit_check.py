"""Does a trained LIBERO policy solve the scenes it was trained on? Closed-loop success on the
first N recorded (training) scenes of each task against N held-out random scenes, both with the
recording's arm noise, to tell a generalisation gap from a failure to reproduce the demonstrations
at all (README roadmap, issue 17):

    MUJOCO_GL=osmesa OMP_NUM_THREADS=1 python scripts/libero_fit_check.py CHECKPOINT --data ROOT \\
        [--scenes 10] [--tasks 0 1 2] [--temporal-ensemble 0.01] [--only train|heldout]

CHECKPOINT is a policy folder (`final/`, or a training checkpoint's folder holding the same files);
ROOT the LeRobotDataset the policy was trained on (its `meta/medvtc_recording.json` names the
recorded reset seeds). `--temporal-ensemble C` replans every step and averages the overlapping
chunks with LeRobot's `ACTTemporalEnsembler` (ACT's temporal ensembling, weights exp(-C i))
instead of executing `n_action_steps` of each chunk. Held-out scenes are drawn from
`validation_seed(7, ...)`, apart from both the recording and the training-time validation
(seed 0..); the official initial states (the test set) are never used. Prints one line per set."""

from __future__ import annotations

import argparse
import json
import types
from collections import deque
from pathlib import Path

import torch

from medvtc.robotics.rollout import load_policy, validation_rollouts, validation_scenes

HELDOUT_SEED = 7  # not the training run's validation seed (train seed 0): these scenes were never selected on


def temporal_ensembling(policy, coeff: float) -> None:
    """Make `policy.select_action` replan every step and return LeRobot's temporally ensembled action."""
    from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

    ensembler = ACTTemporalEnsembler(coeff, policy.config.chunk_size)

    def reset(self) -> None:
        self._action_queue = deque([], maxlen=1)  # empty: the rollout renders and reads every step
        ensembler.reset()

    def select_action(self, batch, **kwargs):
        return ensembler.update(self.predict_action_chunk(batch))

    policy.reset = types.MethodType(reset, policy)
    policy.select_action = types.MethodType(select_action, policy)
    policy.reset()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the policy's training dataset root")
    parser.add_argument("--scenes", type=int, default=10, help="scenes per task and set")
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--temporal-ensemble", type=float, default=None, metavar="COEFF")
    parser.add_argument("--only", choices=("train", "heldout"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary = json.loads((Path(args.data) / "meta" / "medvtc_recording.json").read_text())
    if summary.get("init") != "random":
        raise SystemExit(f"{args.data}: recorded from {summary.get('init')!r} initial states; this check needs random scenes")
    kept = {int(t["task_id"]): [int(s) for s in t["kept_seeds"]] for t in summary["tasks"]}
    missing = [t for t in args.tasks if len(kept.get(t, [])) < args.scenes]
    if missing:
        raise SystemExit(f"{args.data}: fewer than {args.scenes} recorded scenes for task(s) {missing}")
    policy, pre, post = load_policy(args.checkpoint, "cpu")[:3]
    if args.temporal_ensemble is not None:
        temporal_ensembling(policy, args.temporal_ensemble)
    sets = {
        "train": [(t, kept[t][i]) for t in args.tasks for i in range(args.scenes)],
        "heldout": validation_scenes(HELDOUT_SEED, args.tasks, args.scenes, exclude={t: set(kept[t]) for t in args.tasks}),
    }
    for name, scenes in sets.items():
        if args.only and name != args.only:
            continue
        r = validation_rollouts(policy, pre, post, suite=summary["suite"], scenes=scenes,
                                camera_size=int(summary["camera_size"][0]), robot_init_noise=float(summary["robot_init_noise"]))
        solved = {t: round(r[f"val_success_task_{t}"] * args.scenes) for t in args.tasks}
        print(f"{name} scenes: {sum(solved.values())}/{len(scenes)} solved, per task {solved}", flush=True)
