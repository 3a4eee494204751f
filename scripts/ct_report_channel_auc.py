"""Is a finding in the input channels at all? AUC of the simplest channel statistics (each channel's
maximum and sum over the volume) against each label, on a phantom split:

    OMP_NUM_THREADS=1 python scripts/ct_report_channel_auc.py [--root data/ct_rate_phantom_3600 --num-train 3600]
        [--split test] [--volumes 120] [--size 64,64,32]

A label a single channel statistic separates (the calcifications by the [700, 1000) HU channel's
maximum) but the encoder's tokens do not (`scripts/ct_report_token_probe.py`) is lost in the encoder."""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.tasks import get_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/ct_rate_phantom_3600")
    parser.add_argument("--num-train", type=int, default=3600)
    parser.add_argument("--split", default="test")
    parser.add_argument("--volumes", type=int, default=120)
    parser.add_argument("--size", default="64,64,32")
    args = parser.parse_args()
    task = get_task("ct-report")
    cfg = task.load_config(None, [f"data.root={args.root}", f"data.num_train={args.num_train}",
                                  f"data.spatial_size=[{args.size}]", "data.cache=false"])
    ds = task.datasets(cfg, (args.split,))[args.split]
    n = min(len(ds), args.volumes)
    feats, labels = [], []
    for i in range(n):
        x = ds[i]["image"].float()  # [C, X, Y, Z]
        feats.append(np.concatenate([x.flatten(1).amax(1).numpy(), x.flatten(1).sum(1).numpy()]))
        labels.append(ds.records[i].labels)
    F, Y = np.stack(feats), np.stack(labels)
    c = F.shape[1] // 2
    print(f"{n} {args.split} volumes at {args.size}; AUC of each channel's max | sum")
    for j, name in enumerate(CT_RATE_LABELS):
        y = Y[:, j]
        if y.min() == y.max():
            continue
        auc = [roc_auc_score(y, F[:, k]) for k in range(2 * c)]
        print(f"{name:36s} {int(y.sum()):4d}  best max: channel {int(np.argmax(auc[:c]))} {max(auc[:c]):.2f}  "
              f"best sum: channel {int(np.argmax(auc[c:]))} {max(auc[c:]):.2f}")
