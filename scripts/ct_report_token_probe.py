"""Do a frozen encoder's cached tokens carry the findings? 5-fold cross-validated AUC per label of a
logistic regression on the mean- and max-pooled tokens of a token cache (the align stage's,
`<shared_dir>/token_cache/<hash>`, one row per training volume in the split's order):

    OMP_NUM_THREADS=1 python scripts/ct_report_token_probe.py runs/ct-s26/shared-3600/token_cache/87d069cfd2caadfb \\
        [--root data/ct_rate_phantom_3600 --num-train 3600] [--volumes 1500]"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medvtc.common.token_cache import TokenCache
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.tasks import get_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="a token cache folder (with cache.json)")
    parser.add_argument("--root", default="data/ct_rate_phantom_3600")
    parser.add_argument("--num-train", type=int, default=3600)
    parser.add_argument("--volumes", type=int, default=1500)
    args = parser.parse_args()
    cache = TokenCache(args.cache)
    task = get_task("ct-report")
    cfg = task.load_config(None, [f"data.root={args.root}", f"data.num_train={args.num_train}"])
    records = task.datasets(cfg, ("train",))["train"].records
    if len(records) != len(cache):
        raise SystemExit(f"{args.cache} holds {len(cache)} volumes, the train split of {args.root} {len(records)}")
    n = min(len(cache), args.volumes)
    X = np.stack([torch.cat([t.mean(0), t.amax(0)]).numpy() for t in (cache.tokens(i).float() for i in range(n))])
    Y = np.stack([r.labels for r in records[:n]])
    for j, name in enumerate(CT_RATE_LABELS):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        p = cross_val_predict(model, X, Y[:, j], cv=5, method="predict_proba")[:, 1]
        print(f"{name:36s} {int(Y[:, j].sum()):5d} positives  AUC {roc_auc_score(Y[:, j], p):.3f}")
