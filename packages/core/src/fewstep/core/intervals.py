"""A figure with its uncertainty: ``Metric`` (value, 95% interval, n), the bootstrap that makes it, and
the better / worse / not distinguishable verdict between two of them.

The interval is the standard-error bootstrap interval (Efron & Tibshirani 1993, *An Introduction to
the Bootstrap*, Sec. 13.2): value +- z * sd of the statistic over resamples of the samples. The
percentile interval is not used because dFD-like statistics are biased upwards under resampling
(duplicates shrink the effective sample), so their resampled distribution can sit wholly above
the point estimate; the standard-error interval is centred on it and narrows as 1/sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
VERDICTS = ("better", "worse", "not distinguishable")


def _z(level: float) -> float:
    """Two-sided normal quantile: 1.96 at 95%."""
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Metric:
    """One figure: ``value`` with its ``level`` interval [low, high], from ``n`` samples.

    ``se`` is the bootstrap standard error the interval was built from (``compare`` uses it; the
    interval itself may be clipped to the metric's range). ``higher_is_better`` gives the direction.
    """

    value: float
    low: float
    high: float
    n: int
    se: float = 0.0
    higher_is_better: bool = False
    level: float = LEVEL

    def __post_init__(self):
        for k in ("value", "low", "high", "se"):
            if not math.isfinite(getattr(self, k)):
                raise ValueError(f"Metric.{k}={getattr(self, k)} must be finite (a diverged sampler gives NaN samples)")
        if not self.low <= self.value <= self.high:
            raise ValueError(f"Metric interval [{self.low}, {self.high}] must contain its value {self.value}")
        if self.n < 1 or self.se < 0:
            raise ValueError(f"Metric needs n >= 1 and se >= 0, got n={self.n}, se={self.se}")
        if not 0 < self.level < 1:
            raise ValueError(f"Metric.level={self.level} must lie in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Metric:
        return cls(**d)

    def format(self, digits: int = 3) -> str:
        """``1.910 [1.832, 1.988]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = 1000,
    level: float = LEVEL,
    seed: int = 0,
    higher_is_better: bool = False,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Metric:
    """Bootstrap over samples: ``statistic(idx)`` computes the figure from the rows ``idx`` (int array).

    The value is ``statistic(arange(n))``; the interval is value +- z * sd over ``resamples`` draws
    of n rows with replacement (standard-error bootstrap), clipped to ``bounds``.
    """
    if n < 2:
        raise ValueError(f"n={n}: a bootstrap interval needs at least 2 samples")
    if resamples < 2:
        raise ValueError(f"resamples={resamples} must be >= 2")
    value = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=np.float64)  # (B,)
    return _from_resamples(value, reps, n, higher_is_better=higher_is_better, level=level, bounds=bounds)


def jackknife(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: int = 50,
    level: float = LEVEL,
    seed: int = 0,
    higher_is_better: bool = False,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    strata: np.ndarray | None = None,
) -> Metric:
    """Delete-a-group jackknife (Efron & Stein 1981; grouped form, e.g. Shao & Tu 1995 §2.3):
    ``statistic(idx)`` on the rows ``idx``; the rows are dealt at random into G groups, the figure
    is recomputed G times with one group left out, and se^2 = (G - 1) / G * sum_g (theta_g - mean)^2.

    For Fréchet distances this is the interval to use: a bootstrap resample repeats about a third
    of its rows, which shrinks the covariance's effective sample size and inflates FD's variance
    across resamples, while leaving rows out keeps every row distinct. For a set drawn by design
    (class-balanced samples) pass the design's labels as ``strata``: an unstratified leave-out
    changes the class mix, which the design never does (docs/benchmarks/fd_interval.md).
    ``strata`` (one label per row) deals each stratum's rows into the groups separately, so every
    leave-out keeps the strata's proportions (per-class figures)."""
    if n < 2:
        raise ValueError(f"n={n}: a jackknife interval needs at least 2 samples")
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"strata has {len(labels)} labels for {n} rows")
    labels = _pool_singletons(labels)
    smallest = min(int((labels == c).sum()) for c in np.unique(labels))
    g = min(groups, smallest)
    if g < 2:
        raise ValueError(f"a jackknife needs >= 2 groups; the smallest stratum has {smallest} row(s)")
    group = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        group[rows] = np.arange(len(rows)) % g
    value = float(statistic(np.arange(n)))
    reps = np.array([statistic(np.flatnonzero(group != k)) for k in range(g)], dtype=np.float64)  # (G,)
    if not np.isfinite(value) or not np.isfinite(reps).all():
        raise ValueError(f"the statistic is not finite on these samples (value {value}); are the samples finite?")
    se = math.sqrt((g - 1) / g * float(((reps - reps.mean()) ** 2).sum()))
    return from_se(value, se, n, higher_is_better=higher_is_better, level=level, bounds=bounds)


def _pool_singletons(labels: np.ndarray) -> np.ndarray:
    """Strata of one row (a tiny sample of many classes) pooled into one stratum, and that one
    into the largest if it is still a single row: every stratum can then lose a row."""
    values, counts = np.unique(labels, return_counts=True)
    lone = np.isin(labels, values[counts < 2])
    if not lone.any() or len(values) == 1:
        return labels
    pooled = values[counts.argmax()] if lone.sum() == 1 else labels.min() - 1
    return np.where(lone, pooled, labels)


def jackknife_two(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_a: int,
    n_b: int,
    *,
    groups: int = 50,
    level: float = LEVEL,
    seed: int = 0,
    higher_is_better: bool = False,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    strata_a: np.ndarray | None = None,
    strata_b: np.ndarray | None = None,
) -> Metric:
    """A figure of two independent sets (two models' samples): the grouped jackknife of each set
    with the other held whole, their variances added (the first-order variance of a smooth
    two-sample statistic); n is the second set's size. ``strata_a``/``strata_b`` as ``jackknife``."""
    a = jackknife(lambda i: statistic(i, np.arange(n_b)), n_a, groups=groups, seed=seed, strata=strata_a)
    b = jackknife(lambda j: statistic(np.arange(n_a), j), n_b, groups=groups, seed=seed + 1, strata=strata_b)
    return from_se(a.value, math.hypot(a.se, b.se), n_b, higher_is_better=higher_is_better, level=level, bounds=bounds)


def _from_resamples(value: float, reps: np.ndarray, n: int, **kw) -> Metric:
    """The standard-error bootstrap Metric from the point value and the resampled values."""
    if not np.isfinite(value) or not np.isfinite(reps).all():
        raise ValueError(f"the statistic is not finite on these samples (value {value}); are the samples finite?")
    return from_se(value, float(reps.std(ddof=1)), n, **kw)


def bootstrap_mean(per_sample, *, higher_is_better: bool = False, bounds=(-math.inf, math.inf), **kw) -> Metric:
    """The mean of per-sample values (accuracy from 0/1 hits, a per-sample error) with its interval."""
    v = np.asarray(per_sample, dtype=np.float64).reshape(-1)
    return bootstrap(lambda idx: v[idx].mean(), len(v), higher_is_better=higher_is_better, bounds=bounds, **kw)


def bootstrap_ratio(numerator, denominator, *, higher_is_better: bool = False, **kw) -> Metric:
    """sum(numerator) / sum(denominator) over samples (weighted losses such as gluonts' wQuantileLoss, ND)."""
    a = np.asarray(numerator, dtype=np.float64).reshape(-1)
    b = np.asarray(denominator, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"numerator {a.shape} and denominator {b.shape} need one entry per sample each")
    return bootstrap(lambda idx: a[idx].sum() / b[idx].sum(), len(a), higher_is_better=higher_is_better, **kw)


def over_seeds(runs: Sequence[Metric], *, level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Metric:
    """One figure measured under S >= 2 seeds (sampling or training): their mean with a t-interval,
    mean +- t_{S-1} sd / sqrt(S), clipped to ``bounds``. Its ``se`` is t / z times sd / sqrt(S), so
    ``compare`` stays conservative with few seeds. The spread between seeds is what a per-sample
    bootstrap of one seed does not see (headline rows)."""
    from scipy.stats import t as student_t

    runs = list(runs)
    if len(runs) < 2:
        raise ValueError(f"{len(runs)} run(s): an interval over seeds needs at least 2")
    if len({r.higher_is_better for r in runs}) != 1:
        raise ValueError("the runs disagree on higher_is_better: they are not one figure")
    v = np.array([r.value for r in runs], dtype=np.float64)
    widen = float(student_t.ppf(0.5 + level / 2, len(v) - 1)) / _z(level)
    return from_se(float(v.mean()), widen * float(v.std(ddof=1)) / math.sqrt(len(v)), sum(r.n for r in runs),
                   higher_is_better=runs[0].higher_is_better, level=level, bounds=bounds)


def compare(a: Metric, b: Metric, level: float = LEVEL) -> str:
    """Whether ``a`` is better, worse or not distinguishable from ``b`` at ``level``.

    A two-sided z-test on the difference of two independent estimates (different samples):
    |a - b| > z * sqrt(se_a^2 + se_b^2). The direction is the metrics' ``higher_is_better``.
    """
    if a.higher_is_better != b.higher_is_better:
        raise ValueError("compare: the two metrics disagree on which direction is better; compare like with like")
    diff = a.value - b.value
    spread = _z(level) * math.hypot(a.se, b.se)
    if abs(diff) <= spread:
        return "not distinguishable"
    return "better" if (diff > 0) == a.higher_is_better else "worse"


def from_se(value: float, se: float, n: int, *, higher_is_better: bool = False, level: float = LEVEL,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Metric:
    """A Metric from a point estimate and its standard error (an analytic or first-order one)."""
    half = _z(level) * se
    lo, hi = bounds
    return Metric(value, max(lo, min(value, value - half)), min(hi, max(value, value + half)), n, se, higher_is_better, level)
