"""The finding head's global threshold, chosen on validation (medvtc/medical/ct_report/finding_threshold.py)."""

import numpy as np
import pytest

from medvtc.medical.ct_report.finding_threshold import DEFAULT_GRID, choose_finding_threshold, micro_f1_at


def test_micro_f1_pools_every_volume_and_label():
    probs = np.array([[0.9, 0.2], [0.6, 0.7]])
    truth = np.array([[1, 0], [0, 1]])
    # at 0.5: tp 2 (0,0) (1,1), fp 1 (1,0), fn 0 -> 4 / 5
    assert micro_f1_at(probs, truth, 0.5) == pytest.approx(0.8)
    # at 0.8: tp 1, fp 0, fn 1 -> 2 / 3
    assert micro_f1_at(probs, truth, 0.8) == pytest.approx(2 / 3)
    assert micro_f1_at(np.zeros((2, 2)), np.zeros((2, 2)), 0.5) == 0.0  # nothing to find, nothing found


def test_choose_the_grid_threshold_with_the_best_micro_f1():
    """An over-calling head (every negative at 0.55-0.65, the true positives at 0.9) is best cut above 0.65."""
    rng = np.random.default_rng(0)
    truth = rng.random((40, 18)) < 0.2
    probs = np.where(truth, 0.9, rng.uniform(0.55, 0.65, truth.shape))
    threshold, curve, se = choose_finding_threshold(probs, truth)
    assert set(curve) == set(DEFAULT_GRID) and se == 0.0  # perfect at the best threshold in every resample
    assert curve[threshold] == 1.0 and curve[0.5] < 0.6
    # 0.65 (the negatives are below it), 0.7, ..., 0.9 all separate perfectly: the tie goes to the
    # one nearest the configured 0.5
    assert threshold == 0.65


def test_ties_lean_towards_the_configured_threshold():
    probs = np.array([[0.95, 0.02]])
    truth = np.array([[1, 0]])
    assert choose_finding_threshold(probs, truth, default=0.5)[0] == 0.5
    assert choose_finding_threshold(probs, truth, default=0.3)[0] == 0.3
    assert choose_finding_threshold(probs, truth, grid=(0.1, 0.9), default=0.8)[0] == 0.9


def test_one_standard_error_rule_keeps_the_default_when_the_peak_is_noise():
    """A noisy flat top far from the default: the best threshold's F1 is barely above the default's,
    within a standard error, so the rule keeps the default; with tolerance 0 it takes the peak."""
    rng = np.random.default_rng(1)
    truth = rng.random((50, 18)) < 0.2
    probs = np.clip(np.where(truth, 0.7, 0.3) + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    peak, curve, _ = choose_finding_threshold(probs, truth, tolerance_se=0.0)
    chosen, _, se = choose_finding_threshold(probs, truth)
    assert se > 0 and peak != 0.5
    assert chosen == 0.5 and curve[chosen] >= curve[peak] - se
    # a large tolerance always falls back to the configured threshold
    assert choose_finding_threshold(probs, truth, tolerance_se=100.0)[0] == 0.5


@pytest.mark.parametrize("probs, truth, grid, match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), DEFAULT_GRID, "volumes, labels"),
    (np.zeros(3), np.zeros(3), DEFAULT_GRID, "volumes, labels"),
    (np.zeros((3, 2)), np.zeros((3, 2)), (0.0, 0.5), "grid"),
    (np.zeros((3, 2)), np.zeros((3, 2)), (), "grid"),
])
def test_bad_inputs_are_named(probs, truth, grid, match):
    with pytest.raises(ValueError, match=match):
        choose_finding_threshold(probs, truth, grid=grid)


def test_bad_tolerance_or_bootstrap():
    with pytest.raises(ValueError, match="tolerance_se"):
        choose_finding_threshold(np.zeros((3, 2)), np.zeros((3, 2)), tolerance_se=-1)
    with pytest.raises(ValueError, match="bootstrap"):
        choose_finding_threshold(np.zeros((3, 2)), np.zeros((3, 2)), bootstrap=1)
