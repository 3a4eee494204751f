"""`medvtc.common.intervals` against scipy, the normal approximation and the closed-form Wilson
interval; paired differences; the target rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medvtc.common.intervals import (
    bootstrap_interval,
    format_interval,
    mean_of,
    paired_difference_interval,
    target_status,
    wilson_interval,
)


def test_bootstrap_of_a_mean_is_scipys_percentile_bootstrap():
    x = np.random.default_rng(3).gamma(2.0, 1.0, size=40)
    ours = bootstrap_interval(mean_of("x"), {"x": x}, seed=7)
    ref = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(7)).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-9)
    # another seed: another (close) interval; the same seed: the same one
    assert bootstrap_interval(mean_of("x"), {"x": x}, seed=7) == ours
    assert bootstrap_interval(mean_of("x"), {"x": x}, seed=8) != ours


def test_bootstrap_of_a_large_sample_matches_the_normal_approximation():
    x = np.random.default_rng(0).normal(0.5, 0.2, size=4000)
    low, high = bootstrap_interval(mean_of("x"), {"x": x}, seed=0)
    half = stats.norm.ppf(0.975) * x.std(ddof=1) / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.005) and high == pytest.approx(x.mean() + half, abs=0.005)
    assert low < x.mean() < high


def test_mean_of_leaves_out_non_finite_values():
    assert mean_of("d")({"d": np.array([1.0, np.inf, 3.0, np.nan])}) == 2.0
    assert math.isnan(mean_of("d")({"d": np.array([np.nan])}))


def closed_form_wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(7, 20), (0, 10), (10, 10), (1, 3), (45, 90)])
def test_wilson_is_the_closed_form_score_interval(k, n):
    low, high = wilson_interval(k, n)
    ref = closed_form_wilson(k, n)
    assert (low, high) == pytest.approx(ref, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_paired_difference_of_identical_case_sets_is_zero():
    x = np.random.default_rng(1).random(25)
    assert paired_difference_interval(mean_of("x"), {"x": x}, {"x": x.copy()}) == (0.0, 0.0)


def test_paired_interval_is_narrower_than_unpaired_on_correlated_cases():
    rng = np.random.default_rng(2)
    difficulty = rng.random(60)  # hard cases are hard for both variants
    a = np.clip(difficulty + 0.03 + rng.normal(0, 0.02, 60), 0, 1)
    b = np.clip(difficulty + rng.normal(0, 0.02, 60), 0, 1)
    paired = paired_difference_interval(mean_of("x"), {"x": a}, {"x": b}, seed=0)
    # unpaired: each variant's cases resampled on their own
    r = np.random.default_rng(0)
    diffs = [a[r.integers(0, 60, 60)].mean() - b[r.integers(0, 60, 60)].mean() for _ in range(2000)]
    unpaired = np.percentile(diffs, [2.5, 97.5])
    assert paired[0] <= a.mean() - b.mean() <= paired[1]
    assert paired[1] - paired[0] < 0.25 * (unpaired[1] - unpaired[0])
    assert paired[0] > 0  # the paired test sees the +0.03 the unpaired one cannot
    assert unpaired[0] < 0


def test_one_case_gives_a_zero_width_interval():
    # a one-volume test split (the MNI152 set) or a one-episode rollout
    assert bootstrap_interval(mean_of("x"), {"x": np.array([0.7])}) == (0.7, 0.7)
    assert paired_difference_interval(mean_of("x"), {"x": np.array([0.7])}, {"x": np.array([0.5])}) == pytest.approx((0.2, 0.2))
    assert all(math.isnan(v) for v in bootstrap_interval(mean_of("x"), {"x": np.array([])}))


def test_intervals_over_several_seeds_resample_the_cases_once():
    x0, x1 = np.arange(10.0), np.arange(10.0) + 1
    low, high = bootstrap_interval(mean_of("x"), [{"x": x0}, {"x": x1}], seed=0)
    single = bootstrap_interval(mean_of("x"), {"x": (x0 + x1) / 2}, seed=0)
    assert (low, high) == pytest.approx(single, abs=1e-9)
    with pytest.raises(ValueError, match="differ in size"):
        paired_difference_interval(mean_of("x"), {"x": x0}, {"x": x0[:5]})


def test_target_status():
    assert target_status([-0.005, 0.02], 0.01) == "met"  # the whole interval above -1 point
    assert target_status([0.01, 0.03], 0.0) == "met"
    assert target_status([-0.02, 0.01], 0.01) == "not shown"  # straddles -1 point
    assert target_status([-0.05, -0.015], 0.01) == "missed"  # the whole interval below
    assert format_interval(0.85, [0.83, 0.87]) == "0.850 [0.830, 0.870]"
    assert format_interval(0.01, [-0.01, 0.03], signed=True) == "+0.010 [-0.010, +0.030]"
    assert format_interval(None, None) == "-"


def test_a_statistic_undefined_on_some_resamples_still_gets_its_interval():
    """A per-task success rate is undefined on resamples that drew no episode of that task: the
    interval comes from the resamples where it is defined, not nan."""
    import numpy as np

    from medvtc.common.intervals import bootstrap_interval

    task = np.array([0] * 12 + [1] * 2)
    success = np.array([1, 0] * 6 + [1, 1], dtype=float)

    def task1_rate(c):
        sel = c["task"] == 1
        return float(c["success"][sel].mean()) if sel.any() else float("nan")

    low, high = bootstrap_interval(task1_rate, {"task": task, "success": success})
    assert (low, high) == (1.0, 1.0)
