"""Reports of a trained CT report model on a split, and their scores: the pieces that training
(validation), `medvtc eval` and `medvtc bench` share.

- `ReportCollator`: dataset items -> the model's keyword arguments;
- `validation_loss`: teacher-forced loss and `image_gain` (does the report depend on the image?);
- `generate_reports`, `score_reports`: greedy/beam reports and their NLG + clinical metrics;
- `report_cases`: the per-volume results a benchmark keeps (texts, labels, per-case BLEU counts,
  ROUGE-L, METEOR), from which `CASE_STATISTICS` recompute every metric on any resample of the
  volumes (the bench's bootstrap intervals).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from medvtc.datasets.ct_rate import report_text


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------
class ReportCollator:
    """Items of `CTReportDataset` (or plain report strings, for the text-only stage) -> the
    model's keyword arguments: pixel_values [B, 1, X, Y, Z] and the report tokens; with
    `findings`, also the items' 18 labels as `finding_labels` [B, 18] (for the finding head)."""

    def __init__(self, tokenizer, max_report_tokens: int, findings: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_report_tokens = max_report_tokens
        self.findings = findings

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        from medvtc.medical.ct_report.tokenizer import encode_reports

        if isinstance(items[0], str):
            return dict(encode_reports(self.tokenizer, items, max_length=self.max_report_tokens))
        batch = dict(encode_reports(self.tokenizer, [it["report"] for it in items], max_length=self.max_report_tokens))
        if "vision_tokens" in items[0]:  # items of a CachedTokenDataset: the frozen ViT's tokens
            batch["vision_tokens"] = torch.stack([it["vision_tokens"] for it in items])
        else:
            batch["pixel_values"] = torch.stack([it["image"] for it in items])
        if self.findings:
            if any("labels" not in it for it in items):
                raise ValueError("findings=True needs every item's 'labels' (the volume's 18 findings)")
            batch["finding_labels"] = torch.stack([torch.as_tensor(it["labels"], dtype=torch.float32) for it in items])
        return batch


@torch.no_grad()
def validation_loss(model, dataset, device, collate: ReportCollator, batch_size: int = 16) -> dict[str, float]:
    """Teacher-forced loss on a split: cheap enough to run during training (generation is not).

    Also the loss with every report paired with another volume of the split (each volume moved
    one place on), and `image_gain` = that loss minus the true one: how much the model's report
    depends on its own image. A model that ignores the image has a gain of ~0 however good its
    text metrics look (a language prior alone can write a fluent, constant report)."""
    was_training = model.training
    model.eval()
    items = [dataset[i] for i in range(len(dataset))]
    images = [it["image"] for it in items]
    shifted = [dict(it, image=images[(i + 1) % len(items)]) for i, it in enumerate(items)]
    totals = {}
    for key, seq in (("loss", items), ("loss_shuffled_images", shifted)):
        total = 0.0
        for start in range(0, len(seq), batch_size):
            chunk = seq[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            total += float(model(**batch).loss) * len(chunk)
        totals[key] = total / max(len(seq), 1)
    model.train(was_training)
    totals["image_gain"] = totals["loss_shuffled_images"] - totals["loss"]
    return totals


@torch.no_grad()
def generate_reports(model, tokenizer, dataset, device, gen: Any, progress: bool = True) -> list[str]:
    """Greedy (or beam) reports for every item of `dataset`, in order."""
    from tqdm.auto import tqdm

    model.eval()
    n = len(dataset) if gen.max_eval_samples <= 0 else min(len(dataset), gen.max_eval_samples)
    out: list[str] = []
    for start in tqdm(range(0, n, gen.batch_size), desc="generate", unit="batch", disable=not progress, dynamic_ncols=True):
        pixels = torch.stack([dataset[i]["image"] for i in range(start, min(n, start + gen.batch_size))]).to(device)
        ids = model.generate(pixels, max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams)
        out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


def score_reports(predictions: list[str], dataset) -> dict[str, float]:
    """NLG metrics and clinical efficacy (labeler on both sides), plus clinical F1 of the
    predictions against the dataset's label CSV (the phantom's ground truth) when it has one."""
    from medvtc.medical.ct_report.labeler import label_reports
    from medvtc.medical.ct_report.metrics import clinical_efficacy, report_metrics

    records = dataset.records[: len(predictions)]
    references = [report_text(r) for r in records]
    metrics = report_metrics(predictions, references, labeler=label_reports)
    if records and records[0].labels is not None:
        truth = np.stack([r.labels for r in records])
        ce = clinical_efficacy(label_reports(predictions), truth)
        metrics["label_micro_f1"] = ce["micro_f1"]
        metrics["label_macro_f1"] = ce["macro_f1"]
    # A model that ignores the image writes one report for every volume; its clinical F1 then
    # only says how well that one report fits the split. This makes that visible.
    metrics["distinct_reports"] = len(set(predictions)) / max(len(predictions), 1)
    return metrics



# ------------------------------------------------------------------------------------------------
# Per-volume results and the statistics that rebuild every metric from them
# ------------------------------------------------------------------------------------------------
BLEU_N = 4


def report_cases(predictions: list[str], dataset) -> dict[str, list[Any]]:
    """Per-volume columns for the bench json: the texts, the labeler's labels of prediction and
    reference (and the label CSV's, when the split has one), per-case ROUGE-L and METEOR, and
    the clipped n-gram counts and lengths that corpus BLEU sums (NLTK's `modified_precision`)."""
    from nltk.translate.bleu_score import modified_precision

    from medvtc.medical.ct_report.labeler import label_reports
    from medvtc.medical.ct_report.metrics import meteor, rouge_l, tokenize

    records = dataset.records[: len(predictions)]
    references = [report_text(r) for r in records]
    cases: dict[str, list[Any]] = {
        "volume": [r.volume_name for r in records], "prediction": list(predictions), "reference": references,
        "pred_labels": np.asarray(label_reports(predictions)).astype(int).tolist(),
        "ref_labels": np.asarray(label_reports(references)).astype(int).tolist(),
        "rouge_l": [rouge_l([p], [r]) for p, r in zip(predictions, references)],
        "meteor": [meteor([p], [r]) for p, r in zip(predictions, references)],
        "hyp_len": [], "ref_len": [],
        **{f"bleu_match_{n}": [] for n in range(1, BLEU_N + 1)}, **{f"bleu_total_{n}": [] for n in range(1, BLEU_N + 1)},
    }
    if records and records[0].labels is not None:
        cases["true_labels"] = np.stack([r.labels for r in records]).astype(int).tolist()
    for p, r in zip(predictions, references):
        hyp, ref = tokenize(p), tokenize(r)
        cases["hyp_len"].append(len(hyp))
        cases["ref_len"].append(len(ref))
        for n in range(1, BLEU_N + 1):
            frac = modified_precision([ref], hyp, n)
            cases[f"bleu_match_{n}"].append(int(frac.numerator))
            cases[f"bleu_total_{n}"].append(int(frac.denominator))
    return cases


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # sklearn's zero_division=0: a label never predicted and never present scores 0
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _label_f1(pred_key: str, true_key: str, average: str):
    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        pred = np.asarray(cases[pred_key], dtype=np.int64)
        true = np.asarray(cases[true_key], dtype=np.int64)
        tp, fp, fn = (pred & true).sum(0), (pred & (1 - true)).sum(0), ((1 - pred) & true).sum(0)
        if average == "micro":
            return float(_f1(tp.sum(), fp.sum(), fn.sum()))
        return float(_f1(tp, fp, fn).mean())

    return statistic


# Findings a few voxels across at the phantom's 3 x 3 x 5 mm (nodules, nodes, septal lines, dilated
# bronchi): where reading the CT at full resolution should show (issue 18, the Argus experiment)
SMALL_FINDINGS: tuple[str, ...] = ("Lung nodule", "Lymphadenopathy", "Interlobular septal thickening", "Bronchiectasis")


def label_key(label: str) -> str:
    """The metric name of one label's F1: `f1_` + the CT-RATE label in snake case
    (`Lung nodule` -> `f1_lung_nodule`)."""
    return "f1_" + "_".join(label.lower().replace("-", " ").split())


def _one_label_f1(column: int, pred_key: str = "pred_labels", true_key: str = "true_labels"):
    """F1 of one label (a column of the label matrices) over the cases; NaN where it is
    undefined (the label neither present nor predicted in the cases: no TP, FP or FN), so a
    resample that happens to miss a rare label leaves the interval instead of counting 0."""
    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        pred = np.asarray(cases[pred_key], dtype=np.int64)[:, column]
        true = np.asarray(cases[true_key], dtype=np.int64)[:, column]
        tp, fp, fn = int((pred & true).sum()), int((pred & (1 - true)).sum()), int(((1 - pred) & true).sum())
        return math.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    return statistic


def _labels_mean_f1(columns: list[int]):
    """The mean F1 of a few labels (those defined on the cases; NaN if none is)."""
    per_label = [_one_label_f1(c) for c in columns]

    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        values = np.array([f(cases) for f in per_label], dtype=float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    return statistic


def corpus_bleu_from_cases(cases: Mapping[str, np.ndarray], max_n: int = BLEU_N) -> float:
    """NLTK's corpus BLEU (uniform weights, no smoothing, one reference) from the per-case
    counts of `report_cases`: clipped matches and candidate n-grams summed over the corpus, the
    brevity penalty from the summed lengths; 0 when an order has no match (as `bleu_scores`)."""
    hyp_len, ref_len = float(np.sum(cases["hyp_len"])), float(np.sum(cases["ref_len"]))
    if hyp_len == 0:
        return 0.0
    logs = []
    for n in range(1, max_n + 1):
        match, total = float(np.sum(cases[f"bleu_match_{n}"])), float(np.sum(cases[f"bleu_total_{n}"]))
        if match == 0 or total == 0:
            return 0.0
        logs.append(math.log(match / total))
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return float(bp * math.exp(sum(logs) / max_n))


def case_statistics() -> dict[str, Any]:
    """name -> CaseStatistic for the bench: clinical (labeler vs labeler) and label-CSV F1,
    corpus BLEU-4, mean ROUGE-L and METEOR, each recomputed from `report_cases` columns; then,
    against the label CSV (the phantom's ground truth), `small_findings_f1` (the mean F1 of
    `SMALL_FINDINGS`) and each CT-RATE label's F1 (`f1_<label>`, `label_key`)."""
    from medvtc.common.bench_runner import CaseStatistic
    from medvtc.common.intervals import mean_of
    from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS

    small = [CT_RATE_LABELS.index(label) for label in SMALL_FINDINGS]
    return {
        "clinical_micro_f1": CaseStatistic(_label_f1("pred_labels", "ref_labels", "micro")),
        "clinical_macro_f1": CaseStatistic(_label_f1("pred_labels", "ref_labels", "macro")),
        "label_micro_f1": CaseStatistic(_label_f1("pred_labels", "true_labels", "micro")),
        "label_macro_f1": CaseStatistic(_label_f1("pred_labels", "true_labels", "macro")),
        "bleu4": CaseStatistic(corpus_bleu_from_cases),
        "rouge_l": CaseStatistic(mean_of("rouge_l")),
        "meteor": CaseStatistic(mean_of("meteor")),
        "small_findings_f1": CaseStatistic(_labels_mean_f1(small)),
        **{label_key(label): CaseStatistic(_one_label_f1(j)) for j, label in enumerate(CT_RATE_LABELS)},
    }


__all__ = [
    "SMALL_FINDINGS", "ReportCollator", "case_statistics", "label_key", "corpus_bleu_from_cases", "generate_reports", "report_cases", "score_reports",
    "validation_loss",
]
