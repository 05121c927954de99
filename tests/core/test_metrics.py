"""Tests for fewstep.core.metrics: closed forms on Gaussians, sanity on shifts, input checks."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from fewstep.core.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    mmd,
    precision_recall,
    sliced_wasserstein,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


# Fréchet distance.


def test_gaussian_stats_matches_numpy():
    x = _rng().standard_normal((200, 5))
    mu, cov = gaussian_stats(torch.from_numpy(x).float())
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, x32.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x32, rowvar=False, ddof=1), atol=1e-12)
    assert mu.dtype == cov.dtype == np.float64


def test_fd_of_set_with_itself_is_zero():
    x = _rng().standard_normal((500, 16)) @ _rng(1).standard_normal((16, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_from_stats_diagonal_closed_form():
    # Diagonal covariances commute: FD = |mu1-mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fd_from_stats_matches_sqrtm_on_full_covariances():
    # Non-commuting covariances: compare with the textbook scipy.linalg.sqrtm formula.
    rng = _rng(2)
    l1, l2 = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    c1, c2 = l1 @ l1.T + 0.1 * np.eye(6), l2 @ l2.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    got = frechet_distance_from_stats(torch.from_numpy(mu1), c1, mu2, torch.from_numpy(c2))
    assert got == pytest.approx(ref, rel=1e-9)


def test_fd_from_stats_singular_covariance_is_finite_and_nonnegative():
    c = np.diag([1.0, 0.0, 0.0])  # rank 1: a naive sqrtm would go complex / warn here
    assert frechet_distance_from_stats(np.zeros(3), c, np.zeros(3), c) == pytest.approx(
        0, abs=1e-12
    )


def test_fd_from_samples_approximates_closed_form():
    rng = _rng(3)
    mu2, a, b = np.array([0.5, -1.0, 0.0, 2.0]), np.array([1.0, 2.0, 0.5, 1.0]), np.full(4, 1.5)
    x = rng.standard_normal((20000, 4)) * np.sqrt(a)
    y = mu2 + rng.standard_normal((20000, 4)) * np.sqrt(b)
    expected = np.sum(mu2**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.05)


def test_fd_grows_with_mean_shift():
    x = _rng(4).standard_normal((1000, 8))
    y = _rng(5).standard_normal((1000, 8))
    fds = [frechet_distance(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(lo < hi for lo, hi in itertools.pairwise(fds))
    assert fds[-1] == pytest.approx(fds[0] + 8 * 4.0, rel=0.05)  # |shift|^2 = 8 * 2^2


# Sliced Wasserstein.


def test_swd_same_distribution_near_zero():
    x, y = _rng(6).standard_normal((2000, 8)), _rng(7).standard_normal((2000, 8))
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, y) < 0.1


@pytest.mark.parametrize("m", [2000, 1500])
def test_swd_1d_shift(m):
    x, y = _rng(8).standard_normal((2000, 1)), _rng(9).standard_normal((m, 1))
    assert sliced_wasserstein(x, y + 3.0) == pytest.approx(3.0, abs=0.1)
    assert sliced_wasserstein(x, x + 3.0) == pytest.approx(3.0, rel=1e-12)


def test_swd_unequal_sizes_exact_quantiles():
    # {0, 1} vs {0, .5, 1}: quantile functions differ by 0.5 on (1/3, 2/3) -> W1 = 1/6, W2 = sqrt(1/12).
    a, b = np.array([[0.0], [1.0]]), np.array([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(a, b, p=1) == pytest.approx(1 / 6, rel=1e-12)
    assert sliced_wasserstein(a, b, p=2) == pytest.approx(np.sqrt(1 / 12), rel=1e-12)


def test_swd_deterministic_and_symmetric():
    x, y = _rng(10).standard_normal((300, 5)), _rng(11).standard_normal((200, 5)) + 1.0
    assert sliced_wasserstein(x, y, seed=3) == sliced_wasserstein(x, y, seed=3)
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)


# MMD.


def test_mmd_same_distribution_near_zero_and_shift_positive():
    x, y = _rng(12).standard_normal((400, 4)), _rng(13).standard_normal((400, 4))
    same, shifted = mmd(x, y), mmd(x, y + 1.0)
    assert abs(same) < 0.01
    assert shifted > 0.1
    assert shifted > 20 * abs(same)


def test_mmd_biased_exceeds_unbiased_and_matches_direct_formula():
    x, y = _rng(14).standard_normal((50, 3)), _rng(15).standard_normal((40, 3)) + 0.5
    h = 1.3

    def k(u, v):
        return np.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / (2 * h**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    unbiased = (kxx.sum() - 50) / (50 * 49) + (kyy.sum() - 40) / (40 * 39) - 2 * kxy.mean()
    assert mmd(x, y, bandwidth=h, unbiased=False) == pytest.approx(biased, rel=1e-10)
    assert mmd(x, y, bandwidth=h) == pytest.approx(unbiased, rel=1e-10)
    assert biased > unbiased


# Precision / recall.


def test_precision_recall_one_mode_of_two():
    # Real has modes at x = -6 and x = +6; fake covers only the first. 2-D keeps the k-NN
    # manifold estimate tight with few samples (in high D, precision drops for any finite N).
    rng = _rng(16)
    left, right = np.array([-6.0, 0.0]), np.array([6.0, 0.0])
    real = np.concatenate(
        [left + rng.standard_normal((500, 2)), right + rng.standard_normal((500, 2))]
    )
    fake = left + rng.standard_normal((500, 2))
    precision, recall = precision_recall(torch.from_numpy(real).float(), fake, k=3)
    assert precision > 0.9
    assert recall == pytest.approx(0.5, abs=0.05)


def test_precision_recall_same_distribution_high():
    x, y = _rng(17).standard_normal((500, 4)), _rng(18).standard_normal((500, 4))
    precision, recall = precision_recall(x, y)
    assert precision > 0.8 and recall > 0.8


# Input validation.


@pytest.mark.parametrize(
    "fn", [frechet_distance, sliced_wasserstein, mmd, precision_recall], ids=lambda f: f.__name__
)
def test_bad_inputs_raise_helpful_errors(fn):
    good = _rng(19).standard_normal((20, 3))
    with pytest.raises(ValueError, match="2-D"):
        fn(good[:, 0], good)
    with pytest.raises(ValueError, match="same feature dimension"):
        fn(good, good[:, :2])
    nan = good.copy()
    nan[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(good, torch.from_numpy(nan))


def test_too_few_samples_and_bad_stats_raise():
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match=r"shape \(D,\)"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(np.zeros((5, 2)), np.ones((5, 2)), bandwidth=-1.0)


def test_kid_is_unbiased_and_grows_with_a_shift():
    from fewstep.core.metrics import kid

    g = np.random.default_rng(0)
    same = [kid(g.normal(size=(300, 8)), g.normal(size=(300, 8))) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20) + 1e-3  # zero in expectation
    assert min(same) < 0 < max(same)  # unbiased: it straddles 0, unlike FD
    shifted = kid(g.normal(size=(300, 8)), g.normal(size=(300, 8)) + 0.5)
    assert shifted > 10 * max(same)


def test_density_and_coverage_flag_a_collapsed_generator():
    from fewstep.core.metrics import density_coverage

    g = np.random.default_rng(1)
    real = g.normal(size=(500, 4))
    d, c = density_coverage(real, g.normal(size=(500, 4)))
    assert 0.8 < d < 1.2 and c > 0.9
    collapsed = np.repeat(g.normal(size=(1, 4)) * 0.1, 500, axis=0) + 1e-3 * g.normal(size=(500, 4))
    d_c, c_c = density_coverage(real, collapsed)
    assert c_c < 0.05  # one mode covers almost nothing
    outliers = real.copy()
    outliers[:50] += 20.0  # far-away real outliers inflate k-NN recall but not coverage
    _, c_o = density_coverage(outliers, g.normal(size=(500, 4)))
    assert c_o < 0.95


def test_kid_standard_error_matches_the_spread_over_draws():
    from fewstep.core.metrics import kid_and_se

    g = np.random.default_rng(2)
    draws = [kid_and_se(g.normal(size=(400, 6)), g.normal(size=(400, 6)) + 0.3) for _ in range(30)]
    values, ses = np.array([v for v, _ in draws]), np.array([s for _, s in draws])
    assert 0.6 < ses.mean() / values.std(ddof=1) < 1.6


def test_feature_quality_gives_every_figure_an_interval_and_tells_a_collapse_apart():
    from fewstep.core.intervals import compare
    from fewstep.core.metrics import feature_quality

    g = np.random.default_rng(3)
    real = g.normal(size=(400, 6))
    good = feature_quality(real, g.normal(size=(400, 6)), resamples=50)
    collapsed = feature_quality(real, 0.2 * g.normal(size=(400, 6)), resamples=50)
    assert set(good) == {"fd", "kid", "precision", "recall", "density", "coverage"}
    for m in good.values():
        assert m.low <= m.value <= m.high and m.n == 400
    assert compare(good["fd"], collapsed["fd"]) == "better"
    assert compare(good["coverage"], collapsed["coverage"]) == "better"
    assert compare(good["recall"], collapsed["recall"]) == "better"


def test_kid_interval_covers_zero_for_one_distribution_and_excludes_it_for_two():
    """The first-order SE vanishes as KID -> 0 (a degenerate U-statistic): kid_metric bootstraps
    instead, so same-distribution sets are not declared different."""
    from fewstep.core.metrics import kid_metric

    g = torch.Generator().manual_seed(0)
    covered = 0
    for i in range(10):
        a, b = torch.randn(200, 16, generator=g), torch.randn(150, 16, generator=g)
        m = kid_metric(a, b, resamples=100, seed=i)
        covered += m.low <= 0.0 <= m.high
    assert covered >= 8
    far = kid_metric(torch.randn(200, 16, generator=g), torch.randn(150, 16, generator=g) + 0.5, resamples=100)
    assert far.low > 0
