"""A tiny training run for the trainer tests (run as a script, also under torchrun).

    python tests/_tiny_train.py OUT_DIR [--steps N] [--save-every N] [--resume] [--sleep S]
                                [--busy S] [--grad-accum N] [--record FILE]

`--sleep` waits S seconds per step (wall time, no CPU); `--busy` spins S seconds per step (CPU).

The model has dropout, so the RNG state matters; the data are random features with a linear
target. `--record` writes, per rank, the sample ids and losses this rank saw and a checksum of
its final weights (JSON), for the DDP test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medvtc.common.trainer import TrainConfig, Trainer  # noqa: E402


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.seen.append(int(i))
        return {"x": self.x[i], "y": self.y[i], "id": torch.tensor(i)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--busy", type=float, default=0.0)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--record")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    data = Data()
    losses: list[float] = []

    def step_fn(m, batch):
        if args.sleep:
            time.sleep(args.sleep)
        t_end = time.process_time() + args.busy
        while time.process_time() < t_end:
            pass
        loss = nn.functional.mse_loss(m(batch["x"]), batch["y"])
        losses.append(float(loss.detach()))
        return loss

    cfg = TrainConfig(
        max_steps=args.steps, batch_size=args.batch_size, lr=1e-2, warmup_steps=3, save_every=args.save_every,
        log_every=1, eval_every=0, grad_accum=args.grad_accum, progress=False, keep_last=2,
    )
    trainer = Trainer(model, data, cfg, args.out, seed=5, step_fn=step_fn)
    trainer.fit(resume=args.resume)
    if args.record:
        rank = trainer.dist.rank
        checksum = float(sum(p.double().sum() for p in model.parameters()))
        with open(f"{args.record}.rank{rank}.json", "w") as f:
            json.dump({"seen": data.seen, "losses": losses, "checksum": checksum}, f)
    from medvtc.common.distributed import cleanup

    cleanup(trainer.dist)


if __name__ == "__main__":
    main()
