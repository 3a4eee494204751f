"""Do a DAgger recording's expert labels tell the policy to let go of what it holds?

    python scripts/libero_label_conflict.py data/libero_object_clear_cvla_dagger1 data/libero_object_clear_cvla_dagger1_follow

Per dataset, part (the expert's own demonstrations, then each DAgger round) and task: the frames in
which the gripper is partly closed (finger gap between 0.01 and 0.07 m; open is about 0.08 m,
closed on nothing below 0.01) and how many of them carry the label "open" (action[6] < 0). In the
expert's demonstrations a partly closed gripper holds the object and that share is about 0 (it
opens only to release over the target). In on-policy frames a partly closed gripper either holds
the object (then "open" means the labelling expert is out of step with the policy's grasp: README,
"On-policy data (DAgger)"; `ExpertConfig.follow_grasp`) or is closing or hovering half closed on
air, where "open" is the right label: the dataset alone cannot tell the two apart (the object's
pose is not stored), so this is an upper bound on out-of-step labels. Episodes are ordered as
`medvtc.robotics.dagger` aggregates them: the base's first, then each round's. Reads the parquet
files and `meta/medvtc_recording.json` with pandas; nothing else is loaded.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

PARTLY_CLOSED_GAP = (0.01, 0.07)  # finger gap (m): closed on an object, or on its way / half closed


def label_conflict(root: str | Path) -> list[tuple[str, int, int, int]]:
    """(part, task, partly closed frames, of which labelled open) for each part and task of `root`."""
    root = Path(root)
    files = sorted(glob.glob(str(root / "data" / "*" / "*.parquet")))
    summary_path = root / "meta" / "medvtc_recording.json"
    if not files or not summary_path.is_file():
        raise SystemExit(f"{root}: expected a LeRobotDataset v3 folder with data/*/*.parquet and meta/medvtc_recording.json")
    summary = json.loads(summary_path.read_text())
    df = pd.concat([pd.read_parquet(f, columns=["observation.state", "action", "episode_index", "task_index"]) for f in files])
    state, action = np.stack(df["observation.state"].to_numpy()), np.stack(df["action"].to_numpy())
    gap = state[:, 6] - state[:, 7]
    partly_closed = (gap > PARTLY_CLOSED_GAP[0]) & (gap < PARTLY_CLOSED_GAP[1])
    labelled_open = action[:, 6] < 0
    episode = df["episode_index"].to_numpy()
    bounds = [("demonstrations", 0, int(summary["episodes"]))]
    for i, r in enumerate((summary.get("dagger") or {}).get("rounds", []), 1):
        start = bounds[-1][2]
        bounds.append((f"DAgger round {i}", start, start + int(r["episodes"])))
    rows = []
    for part, lo, hi in bounds:
        in_part = (episode >= lo) & (episode < hi)
        for task in sorted(set(df["task_index"].to_numpy()[in_part].tolist())):
            m = in_part & (df["task_index"].to_numpy() == task) & partly_closed
            rows.append((part, int(task), int(m.sum()), int((m & labelled_open).sum())))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="LeRobotDataset folders recorded by medvtc data --task libero")
    args = ap.parse_args(argv)
    for root in args.roots:
        print(f"{root}:")
        print("| part | task | frames with the gripper partly closed | of which labelled open |")
        print("|---|---|---|---|")
        for part, task, n, opened in label_conflict(root):
            print(f"| {part} | {task} | {n} | {opened} ({opened / max(n, 1):.0%}) |")


if __name__ == "__main__":
    main()
