"""Success of a policy evaluated by `medvtc eval --task libero` against a bench row, paired over the
same official episodes (task, initial state), with the bench's intervals (Wilson for the rate,
paired bootstrap for the difference), overall and per task:

    python scripts/libero_paired.py BENCH_ROW/bench_eval.json RUN/final/eval_libero_object.json
    python scripts/libero_paired.py benchmarks/results/A/libero.json#none benchmarks/results/B/libero.json#compressor_vla

For a policy trained outside the bench (a DAgger round, a fine-tune) that is to be compared with a
bench row before it enters the bench itself, or for rows of two committed bench results (`FILE#method`,
seed 0's episodes) run on the same data and official episodes. Refuses an evaluation that lacks any of
the reference's episodes."""

from __future__ import annotations

import argparse
import json

import numpy as np

from medvtc.common.intervals import paired_difference_interval, wilson_interval


def _mean(cases) -> float:
    return float(np.mean(cases["success"]))


def _cases(spec: str) -> dict:
    """Per-episode cases {"task", "init_state", "success"} of a bench row: `FILE#method` (a bench results
    json, seed 0) or a bench_eval.json."""
    path, _, method = spec.partition("#")
    doc = json.load(open(path))
    if not method:
        return doc["cases"]
    rows = [r for r in doc.get("rows", []) if r.get("method") == method]
    if not rows:
        raise SystemExit(f"{path}: no row {method!r} (rows: {[r.get('method') for r in doc.get('rows', [])]})")
    return rows[0]["cases"]["seed_0"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="a bench row's bench_eval.json (its per-episode cases), or RESULTS.json#method")
    parser.add_argument("evaluation", help="eval_<suite>.json written by medvtc eval / rollout -o, or RESULTS.json#method")
    args = parser.parse_args()
    ref = _cases(args.reference)
    if "#" in args.evaluation:
        c = _cases(args.evaluation)
        got = {(int(t), int(k)): float(s) for t, k, s in zip(c["task"], c["init_state"], c["success"])}
    else:
        new = json.load(open(args.evaluation))
        got = {(int(t), int(e["init_state_id"])): float(e["success"]) for t, v in new["tasks"].items()
               for e in v["episodes"]}
    keys = list(zip((int(t) for t in ref["task"]), (int(e) for e in ref["init_state"])))
    missing = [k for k in keys if k not in got]
    if missing:
        raise SystemExit(f"{args.evaluation}: no episode for (task, initial state) {missing[0]} of {args.reference}")
    a = np.array([got[k] for k in keys])
    b = np.asarray(ref["success"], dtype=float)
    for task in [None, *sorted({t for t, _ in keys})]:
        m = np.ones(len(keys), bool) if task is None else np.array([t == task for t, _ in keys])
        aa, bb = {"success": a[m]}, {"success": b[m]}
        lo, hi = wilson_interval(int(aa["success"].sum()), int(m.sum()))
        dlo, dhi = paired_difference_interval(_mean, aa, bb)
        print(f"{'all' if task is None else f'task {task}'}: {_mean(aa):.1%} [{lo:.1%}, {hi:.1%}] against {_mean(bb):.1%}, "
              f"paired {100 * (_mean(aa) - _mean(bb)):+.1f} points [{100 * dlo:+.1f}, {100 * dhi:+.1f}] over {int(m.sum())} episodes")
