"""Metric intervals: the bootstrap interval holds its point estimate and narrows as 1/sqrt(n); verdicts."""

import math

import numpy as np
import pytest

from fewstep.core.tasks import Metric, bootstrap, bootstrap_mean, bootstrap_ratio, compare


def test_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = bootstrap_mean(rng.normal(1.0, 1.0, 50)), bootstrap_mean(rng.normal(1.0, 1.0, 2000))
    for m in (small, large):
        assert m.low <= m.value <= m.high
        assert m.low < 1.0 < m.high  # covers the true mean (both at ~3 se from failing for this seed)
    width = lambda m: m.high - m.low
    assert width(large) < width(small) / 4  # sqrt(2000 / 50) = 6.3 narrower in expectation
    # The standard error is the sd of the mean: 1 / sqrt(n) for unit-variance data.
    assert large.se == pytest.approx(1 / math.sqrt(2000), rel=0.15)


def test_biased_statistic_still_holds_its_estimate():
    # A statistic that grows under resampling (fewer distinct points), as dFD does: the
    # standard-error interval stays centred on the point estimate.
    x = np.arange(40.0)
    m = bootstrap(lambda idx: -len(np.unique(x[idx])), 40, resamples=200)
    assert m.value == -40 and m.low <= m.value <= m.high


def test_bounds_ratio_and_direction():
    hits = np.array([1] * 19 + [0])
    acc = bootstrap_mean(hits, higher_is_better=True, bounds=(0.0, 1.0))
    assert acc.value == 0.95 and acc.high <= 1.0 and acc.higher_is_better
    r = bootstrap_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert r.value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        bootstrap_mean([1.0])
    with pytest.raises(ValueError, match="contain its value"):
        Metric(1.0, 1.5, 2.0, 10)


def test_compare_states_better_worse_or_not_distinguishable():
    low = Metric(1.0, 0.9, 1.1, 100, se=0.05)
    high = Metric(2.0, 1.9, 2.1, 100, se=0.05)
    near = Metric(1.05, 0.95, 1.15, 100, se=0.05)
    assert compare(low, high) == "better" and compare(high, low) == "worse"  # lower is better by default
    assert compare(low, near) == "not distinguishable"
    acc_a, acc_b = (Metric(v, v - 0.01, v + 0.01, 500, se=0.005, higher_is_better=True) for v in (0.9, 0.8))
    assert compare(acc_a, acc_b) == "better"
    with pytest.raises(ValueError, match="direction"):
        compare(low, acc_a)
    assert Metric.from_dict(low.to_dict()) == low


def test_over_seeds_is_a_t_interval_of_the_seed_means():
    import math

    from fewstep.core.intervals import Metric, over_seeds

    vals = [1.8, 1.9, 2.0, 1.85, 1.95]
    runs = [Metric(v, v - 1.0, v + 1.0, 500, 0.5) for v in vals]  # wide per-seed bootstrap intervals
    m = over_seeds(runs, bounds=(0.0, math.inf))
    sd = (sum((v - 1.9) ** 2 for v in vals) / 4) ** 0.5
    assert m.value == pytest.approx(1.9) and m.n == 2500
    assert m.high - m.value == pytest.approx(2.776 * sd / 5**0.5, rel=1e-3)  # t_{0.975, 4} = 2.776
    with pytest.raises(ValueError, match="at least 2"):
        over_seeds(runs[:1])
