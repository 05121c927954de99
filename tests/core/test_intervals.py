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


def test_jackknife_of_a_mean_is_its_standard_error():
    from fewstep.core.intervals import jackknife

    x = np.random.default_rng(0).normal(size=400)
    m = jackknife(lambda i: x[i].mean(), len(x), groups=40)
    assert m.value == pytest.approx(x.mean())
    assert m.se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.25)  # grouped: close, not equal
    assert m.low < m.value < m.high


def test_jackknife_strata_keep_every_class_in_each_leave_out():
    from fewstep.core.intervals import jackknife

    y = np.repeat(np.arange(4), [3, 10, 10, 10])
    seen = []
    jackknife(lambda i: seen.append(np.bincount(y[i], minlength=4).min()) or 0.0, len(y), groups=50, strata=y)
    assert len(seen) == 4  # one call for the value, then min(groups, smallest stratum) = 3 leave-outs
    assert min(seen) >= 2
    with pytest.raises(ValueError, match="at least 2 samples"):
        jackknife(lambda i: 0.0, 1)
    with pytest.raises(ValueError, match="labels for"):
        jackknife(lambda i: 0.0, 5, strata=np.array([0, 1]))


def test_fd_jackknife_reports_the_spread_between_sample_sets_and_the_bootstrap_overstates_it():
    """A Fréchet distance at n = 4D: the spread over independent sample sets (the reference held
    fixed) against what one set's interval claims. The bootstrap's repeated rows inflate it."""
    from fewstep.core.intervals import bootstrap, jackknife
    from fewstep.core.metrics import frechet_distance_from_stats, gaussian_stats

    g = np.random.default_rng(4)
    d, n = 16, 64
    stats_real = gaussian_stats(g.normal(size=(2000, d)))
    values, jk, bs = [], [], []
    for s in range(20):
        fake = g.normal(size=(n, d)) * 1.1 + 0.1

        def fd(i):
            return frechet_distance_from_stats(*stats_real, *gaussian_stats(fake[i]))

        values.append(fd(np.arange(n)))
        jk.append(jackknife(fd, n, groups=32, seed=s).se)
        bs.append(bootstrap(fd, n, resamples=100, seed=s).se)
    truth = np.std(values, ddof=1)
    assert 0.6 < np.mean(jk) / truth < 1.8  # honest to conservative (Efron-Stein: the jackknife over-, never under-estimates on average)
    assert np.mean(bs) > 1.25 * np.mean(jk)


def test_fd_of_a_class_balanced_set_needs_the_classes_as_strata():
    """Features that cluster by class, sets drawn class-balanced: an unstratified leave-out moves FD
    by changing the class mix, which no balanced set does; stratified, the jackknife is honest."""
    from fewstep.core.intervals import jackknife
    from fewstep.core.metrics import frechet_distance_from_stats, gaussian_stats

    g = np.random.default_rng(0)
    k, per, d = 5, 30, 8
    centres = 6 * g.normal(size=(k, d))
    labels = np.repeat(np.arange(k), per)
    stats_real = gaussian_stats(np.concatenate([c + g.normal(size=(400, d)) for c in centres]))
    values, plain, strat = [], [], []
    for s in range(20):
        fake = centres[labels] * 1.05 + g.normal(size=(k * per, d))

        def fd(i):
            return frechet_distance_from_stats(*stats_real, *gaussian_stats(fake[i]))

        values.append(fd(np.arange(k * per)))
        plain.append(jackknife(fd, k * per, groups=30, seed=s).se)
        strat.append(jackknife(fd, k * per, groups=30, seed=s, strata=labels).se)
    truth = np.std(values, ddof=1)
    assert np.mean(plain) > 2 * truth
    assert 0.6 < np.mean(strat) / truth < 1.8


def test_jackknife_pools_strata_of_one_row():
    from fewstep.core.intervals import jackknife

    x = np.arange(20, dtype=float)
    y = np.array([0] * 10 + [1] * 8 + [2, 3])  # two classes drawn once each (n = 20, many classes)
    m = jackknife(lambda i: x[i].mean(), 20, strata=y)
    assert m.low < m.value < m.high
    one = np.array([0] * 19 + [1])  # a lone row joins the largest stratum
    assert jackknife(lambda i: x[i].mean(), 20, strata=one).se > 0
