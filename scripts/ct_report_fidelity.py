"""How faithfully a ct-report model with finding tokens (`model.finding_tokens`) writes the findings
it is told: reports generated from the true labels and from the head's own decisions, read back by
the labeler, scored (micro F1) against the truth and against the findings given (README, issue 18):

    OMP_NUM_THREADS=1 python scripts/ct_report_fidelity.py RUN_DIR [--volumes 100]

The first test volumes of the run's own data settings (RUN_DIR/config.yaml's `data`). "reports from
the true labels vs truth" is the F1 a perfect finding head would give: the writing's ceiling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medvtc.common.config import read_yaml
from medvtc.medical.ct_report.labeler import label_reports
from medvtc.medical.ct_report.pipeline import CTReportGenerator
from medvtc.tasks import get_task


def micro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = (pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()
    return float(2 * tp / max(2 * tp + fp + fn, 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder with final/ and config.yaml")
    parser.add_argument("--volumes", type=int, default=100, help="first N test volumes (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("ct-report")
    saved = Path(args.run) / "config.yaml"
    data = read_yaml(saved).get("data", {}) if saved.is_file() else {}
    cfg = task.load_config(None, [f"data.{k}={json.dumps(v)}" for k, v in data.items()])
    test = task.datasets(cfg, ("test",))["test"]
    gen = CTReportGenerator.from_pretrained(f"{args.run}/final", device="cpu")
    model = gen.model.eval()
    if model.finding_embedding is None:
        raise SystemExit(f"{args.run}: the model has no finding tokens (model.finding_tokens=false)")
    n = len(test) if args.volumes <= 0 else min(args.volumes, len(test))
    truth, head, from_truth, from_head = [], [], [], []
    with torch.no_grad():
        for start in range(0, n, args.batch_size):
            items = [test[i] for i in range(start, min(n, start + args.batch_size))]
            x = torch.stack([it["image"] for it in items])
            y = torch.stack([torch.as_tensor(it["labels"]) for it in items]).long()
            h = (model.predict_findings(x) >= model.config.finding_threshold).long()
            for states, out in ((y, from_truth), (h, from_head)):
                ids = model.generate(x, max_new_tokens=cfg.generation.max_new_tokens, finding_states=states)
                texts = [t.strip() for t in gen.tokenizer.batch_decode(ids, skip_special_tokens=True)]
                out.append(label_reports(texts) > 0)
            truth.append(y.numpy() > 0)
            head.append(h.numpy() > 0)
    t, h, rt, rh = (np.concatenate(a) for a in (truth, head, from_truth, from_head))
    result = {"run": args.run, "volumes": n, "head_vs_truth": micro_f1(h, t),
              "reports_from_head_vs_truth": micro_f1(rh, t), "reports_from_head_vs_given": micro_f1(rh, h),
              "reports_from_truth_vs_truth": micro_f1(rt, t)}
    print(json.dumps(result, indent=1))
