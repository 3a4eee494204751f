"""Two-process DistributedDataParallel on CPU (gloo), launched by torchrun as a user would."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medvtc.common import checkpoint as ckpt

SCRIPT = Path(__file__).with_name("_tiny_train.py")


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    # --standalone: a private rendezvous on a free local port (never a fixed one shared with others).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_two_process_ddp_shards_syncs_and_writes_once(tmp_path):
    out = tmp_path / "run"
    record = tmp_path / "record"
    steps = 8
    proc = torchrun(str(SCRIPT), str(out), "--steps", str(steps), "--save-every", "4", "--record", str(record), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads(Path(f"{record}.rank0.json").read_text())
    r1 = json.loads(Path(f"{record}.rank1.json").read_text())

    # Sharded sampler: the two ranks saw disjoint samples.
    assert r0["seen"] and r1["seen"]
    assert not set(r0["seen"]) & set(r1["seen"]), "ranks must not see the same samples in one epoch"
    assert len(r0["seen"]) == len(r1["seen"]) == steps * 4

    # Gradients are all-reduced: both ranks end with identical weights.
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=0, abs=1e-9)

    # Only rank 0 writes: one set of checkpoints, one CSV row per step and metric.
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000004", "step_00000008"]
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "loss"]
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))

    # Logged training loss is the mean over ranks of each rank's loss.
    for step in range(steps):
        expected = (r0["losses"][step] + r1["losses"][step]) / 2
        assert float(rows[step]["value"]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path):
    data = tmp_path / "tg"
    subprocess.run([sys.executable, "-m", "medvtc", "data", "--task", "compressors", f"data.root={data}",
                    "data.num_train=32", "data.num_val=8", "data.num_test=8", "data.grid=[8,8]", "data.dim=16",
                    "data.text_dim=8"], check=True, capture_output=True, cwd=tmp_path)
    out = tmp_path / "run"
    proc = torchrun("-m", "medvtc", "train", "--task", "compressors", "model.name=random", "model.budget=16",
                    f"data.root={data}", f"output_dir={out}", "train.max_steps=4", "train.batch_size=4",
                    "train.save_every=2", "train.eval_every=0", "train.progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file()
    assert proc.stdout.count("weights and config in") == 1, "only rank 0 reports"
