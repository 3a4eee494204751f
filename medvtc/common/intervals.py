"""95 % intervals for benchmark figures, and the target rule that reads them.

- `bootstrap_interval`: the percentile bootstrap over test cases (volumes, episodes) of any
  statistic of those cases (a mean, a micro F1 from per-case counts, a corpus BLEU from per-case
  texts), 2,000 resamples, seeded.
- `paired_difference_interval`: the same resamples of the same cases fed to two variants'
  statistics (variant minus reference): the paired bootstrap, so the noise both variants share
  (hard cases are hard for everyone) cancels.
- `wilson_interval`: the Wilson score interval of a success rate (robot episodes).
- `target_status`: a target such as "within 2 points of the reference" is "met" only when the
  whole difference interval lies above the margin, "missed" when it lies below, "not shown"
  when it straddles it.

The resampling is scipy's (`scipy.stats.bootstrap`, percentile method) and the Wilson interval
is scipy's (`scipy.stats.binomtest(...).proportion_ci`); what is written here is only the
plumbing that turns "a statistic of a set of cases" into the index resampling those expect.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95

# A statistic of a set of cases: per-case columns (arrays whose first axis is the case) in, a
# number out. Called on resampled columns, so it must not assume distinct cases.
Statistic = Callable[[Mapping[str, np.ndarray]], float]
TargetStatus = Literal["met", "not shown", "missed"]


def as_columns(cases: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Per-case results as stored in a bench json (lists) -> numpy columns of equal length."""
    cols = {k: np.asarray(v, dtype=object if v and isinstance(v[0], str) else None) for k, v in cases.items()}
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-case columns differ in length: {lengths}")
    return cols


def num_cases(cases: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(cases.values()))) if cases else 0


def take(cases: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in cases.items()}


def _bootstrap(values_of: Callable[[np.ndarray], float], n: int, n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    if n == 1:  # every resample is the one case (scipy refuses a sample of one)
        value = values_of(np.zeros(1, dtype=np.int64))
        return float(value), float(value)
    from scipy.stats import bootstrap

    def batched(index: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy hands over all resamples at once ([..., n] case indices); the statistic is any
        # function of a case set, so it is evaluated resample by resample
        index = np.asarray(index, dtype=np.int64)
        rows = index.reshape(-1, index.shape[-1])
        return np.array([values_of(r) for r in rows]).reshape(index.shape[:-1])

    with warnings.catch_warnings():
        # a statistic that is constant over resamples (F1 = 0 everywhere) gives a degenerate,
        # zero-width interval: that is the right answer here, not a reason to warn
        warnings.simplefilter("ignore")
        res = bootstrap((np.arange(n),), batched, n_resamples=n_resamples, vectorized=True, method="percentile",
                        confidence_level=level, rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    if np.isnan(dist).any():
        # a statistic undefined on some resamples (a task with no episode drawn): the interval
        # of the resamples where it is defined, rather than none at all
        if np.isnan(dist).all():
            return math.nan, math.nan
        alpha = (1 - level) / 2
        low, high = np.nanpercentile(dist, [100 * alpha, 100 * (1 - alpha)])
        return float(low), float(high)
    ci = res.confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap_interval(statistic: Statistic, cases: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                       n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of `statistic` over the cases. `cases` may be a list of
    case sets of one split (one per training seed, same cases in the same order): each resample
    then draws case indices once and averages the statistic over the seeds."""
    sets = [cases] if isinstance(cases, Mapping) else list(cases)
    n = _common_length(sets)
    return _bootstrap(lambda i: float(np.mean([statistic(take(c, i)) for c in sets])), n, n_resamples, level, seed)


def paired_difference_interval(statistic: Statistic, cases: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                               reference: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                               n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Paired-bootstrap interval of statistic(cases) - statistic(reference): both evaluated on
    the same resampled case indices (the two must hold the same cases in the same order)."""
    a = [cases] if isinstance(cases, Mapping) else list(cases)
    b = [reference] if isinstance(reference, Mapping) else list(reference)
    n = _common_length(a + b)

    def diff(i: np.ndarray) -> float:
        return float(np.mean([statistic(take(c, i)) for c in a]) - np.mean([statistic(take(c, i)) for c in b]))

    return _bootstrap(diff, n, n_resamples, level, seed)


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a success rate (as a fraction)."""
    if trials == 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def target_status(diff_ci: Sequence[float], margin: float) -> TargetStatus:
    """"within `margin` of the reference" (margin >= 0, in the metric's units): met when the
    whole paired-difference interval lies above -margin, missed when it lies below, else not shown."""
    low, high = float(diff_ci[0]), float(diff_ci[1])
    if low > -margin:
        return "met"
    if high < -margin:
        return "missed"
    return "not shown"


def mean_of(column: str) -> Statistic:
    """The statistic "mean of a per-case column" (Dice per volume, success per episode, ...)."""
    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        values = np.asarray(cases[column], dtype=float)
        values = values[np.isfinite(values)]  # undefined cases (nan, stored as null) are left out, as MONAI's mean does
        return float(values.mean()) if values.size else math.nan

    statistic.__name__ = f"mean_of_{column}"
    return statistic


def format_interval(value: float | None, ci: Sequence[float] | None, digits: int = 3, signed: bool = False) -> str:
    """`0.850 [0.830, 0.870]` (the markdown form of a figure with its interval)."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    if ci is not None and all(c is not None and math.isfinite(c) for c in ci):
        text += f" [{ci[0]:{sign}.{digits}f}, {ci[1]:{sign}.{digits}f}]"
    return text


def _common_length(sets: Sequence[Mapping[str, np.ndarray]]) -> int:
    lengths = {num_cases(c) for c in sets}
    if len(lengths) > 1:
        raise ValueError(f"case sets differ in size ({sorted(lengths)}): paired intervals need the same cases")
    return lengths.pop() if lengths else 0


__all__ = [
    "LEVEL", "N_RESAMPLES", "Statistic", "as_columns", "bootstrap_interval", "format_interval", "mean_of",
    "num_cases", "paired_difference_interval", "take", "target_status", "wilson_interval",
]
