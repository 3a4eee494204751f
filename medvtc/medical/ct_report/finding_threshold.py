"""The finding head's decision threshold, chosen on the validation split.

The head is trained with a binary cross-entropy weighted by each label's training prevalence
(`pretraining.label_pos_weight`), which balances the rare labels' gradients but shifts every
probability up: at 0.5 the head over-calls the findings it reads poorly (lymphadenopathy,
atelectasis, lung nodule: precision 0.2-0.3 on the phantom's validation split), and micro F1 pays
for every false positive. One global threshold chosen on the validation volumes removes most of
them; per-label thresholds would fit 18 numbers to a split of about 50 volumes and, measured on
the phantom, did worse on test than the one global value.

A split that small also makes the F1 curve flat and noisy near its top (on the phantom: 0.66-0.67
anywhere from 0.75 to 0.95, the maximum at 0.95, where test F1 had fallen again), so the choice
follows the one-standard-error rule (Breiman et al., CART, 1984): among the thresholds whose
validation F1 is within one bootstrap standard error (over volumes) of the best, the one nearest
the configured threshold.

No library does this selection (scikit-learn's `TunedThresholdClassifierCV` tunes one binary
classifier's threshold by cross-validation, not one shared threshold over pooled multi-label
counts), so it is written here: a grid search over the pooled true/false positive counts.
"""

from __future__ import annotations

import numpy as np

DEFAULT_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.10, ..., 0.95


def micro_f1_at(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Micro F1 over all (volume, label) pairs of the decisions `probs >= threshold`.

    Args:
        probs: (N, L) probabilities.
        truth: (N, L) 0/1 or boolean labels.
    """
    pred = probs >= threshold
    true = truth > 0
    tp = float((pred & true).sum())
    fp = float((pred & ~true).sum())
    fn = float((~pred & true).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1.0)


def choose_finding_threshold(probs: np.ndarray, truth: np.ndarray, grid=DEFAULT_GRID, default: float = 0.5,
                             tolerance_se: float = 1.0, bootstrap: int = 200,
                             seed: int = 0) -> tuple[float, dict[float, float], float]:
    """The global threshold for the finding head's decisions: among the `grid` thresholds whose
    micro F1 of `probs` against `truth` is within `tolerance_se` bootstrap standard errors of the
    best one's, the one nearest `default` (the one-standard-error rule; 0: the best, ties nearest
    `default`).

    Args:
        probs: (N, L) the head's probabilities on the validation volumes.
        truth: (N, L) their labels.
        grid: candidate thresholds, each in (0, 1).
        default: the threshold the choice leans towards (the config's `finding_threshold`).
        tolerance_se: how many standard errors below the best F1 still count as as good.
        bootstrap: resamples of the volumes for the standard error of the best threshold's F1.
        seed: the resampling's seed (the choice is deterministic).
    Returns:
        (threshold, {threshold: micro F1}, the standard error used).
    """
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth)
    if probs.ndim != 2 or probs.shape != truth.shape:
        raise ValueError(f"probs and truth must both be (volumes, labels), got {probs.shape} and {truth.shape}")
    if len(grid) == 0 or not all(0.0 < float(t) < 1.0 for t in grid):
        raise ValueError(f"grid must hold thresholds in (0, 1), got {list(grid)!r}")
    if tolerance_se < 0 or bootstrap < 2:
        raise ValueError(f"tolerance_se must be >= 0 and bootstrap >= 2, got {tolerance_se} and {bootstrap}")
    curve = {float(t): micro_f1_at(probs, truth, float(t)) for t in grid}
    best = max(curve.items(), key=lambda kv: (round(kv[1], 12), -abs(kv[0] - default)))[0]
    se = 0.0
    if tolerance_se > 0 and len(probs) > 1:
        rows = np.random.default_rng(seed).integers(0, len(probs), size=(bootstrap, len(probs)))
        se = float(np.std([micro_f1_at(probs[r], truth[r], best) for r in rows], ddof=1))
    floor = curve[best] - tolerance_se * se - 1e-12
    chosen = min((t for t, f in curve.items() if f >= floor), key=lambda t: (abs(t - default), t))
    return chosen, curve, se


__all__ = ["DEFAULT_GRID", "choose_finding_threshold", "micro_f1_at"]
