"""How long a LIBERO recording's demonstrations wait at the grasp before the gripper closes:

    python scripts/libero_grasp_wait.py data/libero_object_dart50_norm data/libero_object_dart50_clear

Per task: the frames before the first close spent within 1 cm of the height the gripper closes
at (a descent stalled on an obstacle waits there until the expert's step budget ends it; README,
"A grasp the hand can reach"), how many episodes close more than once (a retried grasp), and the
mean episode length. Reads the dataset's parquet files (state[:3] = end-effector xyz, action[6] =
the gripper command) with pandas; nothing else is loaded.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import pandas as pd


def grasp_wait(root: str | Path, near: float = 0.01) -> dict[int, dict[str, float]]:
    files = sorted(glob.glob(str(Path(root) / "data" / "*" / "*.parquet")))
    if not files:
        raise SystemExit(f"{root}: no data/*/*.parquet files (expected a LeRobotDataset v3 folder)")
    df = pd.concat([pd.read_parquet(f, columns=["observation.state", "action", "episode_index", "task_index"]) for f in files])
    out: dict[int, dict[str, float]] = {}
    for task, rows in df.groupby("task_index"):
        waits, retried, lengths = [], 0, []
        for _, ep in rows.groupby("episode_index"):
            action, state = np.stack(ep["action"].values), np.stack(ep["observation.state"].values)
            switches = np.flatnonzero(np.diff(action[:, 6]) != 0)
            first = int(switches[0]) if len(switches) else len(ep) - 1
            z = state[: first + 1, 2]
            waits.append(int((np.abs(z - z[-1]) < near).sum()))
            retried += len(switches) > 1
            lengths.append(len(ep))
        out[int(task)] = {"episodes": len(lengths), "wait_mean": float(np.mean(waits)), "wait_max": int(max(waits)),
                          "retried": retried, "length_mean": float(np.mean(lengths))}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="LeRobotDataset folders recorded by medvtc data --task libero")
    args = parser.parse_args()
    for root in args.roots:
        print(root)
        for task, r in grasp_wait(root).items():
            print(f"  task {task}: {r['episodes']} episodes, {r['wait_mean']:.1f} frames (max {r['wait_max']}) within 1 cm of "
                  f"the closing height before the close, grasp retried in {r['retried']}, mean length {r['length_mean']:.0f}")
