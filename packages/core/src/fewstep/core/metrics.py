"""Sample-quality metrics on feature matrices of shape (N, D).

Every function takes torch tensors or numpy arrays, computes in float64 on the CPU and returns
plain Python floats. The features themselves (e.g. from fewstep's own classifier) are computed
elsewhere: these metrics only compare two sets of vectors.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

ArrayLike = np.ndarray | torch.Tensor

# Rows per torch.cdist block: keeps one (rows, N) float64 distance block near 64 MiB.
_BLOCK_ELEMS = 1 << 23
# Points used for the median-heuristic bandwidth of `mmd`; larger pooled sets are subsampled.
_MEDIAN_MAX_POINTS = 2048


def _as_features(x: ArrayLike, name: str, min_n: int = 2) -> np.ndarray:
    """Checks that `x` is a finite (N, D) matrix with N >= min_n and returns it as float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x)
    if np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (N, D) feature matrix, got shape {tuple(x.shape)}; "
            f"flatten each sample first, e.g. x.reshape(len(x), -1) (or x[:, None] for scalars)."
        )
    if x.shape[0] < min_n or x.shape[1] < 1:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, but this metric needs at least {min_n} samples "
            f"(rows) of at least 1 feature; pass more samples."
        )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"{name} contains NaN or inf in {bad} of {x.shape[0]} rows; "
            f"drop or fix those samples (diverged sampler?) before computing metrics."
        )
    return x


def _as_pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str], min_n: int = 2):
    """Validates both feature matrices and checks that they share the feature dimension D."""
    a, b = _as_features(a, names[0], min_n), _as_features(b, names[1], min_n)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same feature dimension D, got "
            f"{a.shape[1]} and {b.shape[1]}; extract both with the same feature network."
        )
    return a, b


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian fit for FID (Heusel et al. 2017): sample mean (D,) and covariance (D, D), ddof 1."""
    x = _as_features(feats, "feats", min_n=2)  # (N, D)
    mu = x.mean(axis=0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    return mu, (cov + cov.T) / 2  # exact symmetry for eigh downstream


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh; tiny negative eigenvalues (round-off) become 0."""
    w, v = scipy.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance of two Gaussians (Heusel et al. 2017, FID), from their statistics.

    |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2); accepts numpy arrays or tensors.
    """
    mu1, mu2 = (np.asarray(torch.as_tensor(m).double()).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (np.asarray(torch.as_tensor(c).double()) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"expected mu1, mu2 of shape (D,) and cov1, cov2 of shape (D, D); got {mu1.shape}, "
            f"{mu2.shape}, {cov1.shape}, {cov2.shape}; compute them with gaussian_stats()."
        )
    if not all(np.isfinite(t).all() for t in (mu1, mu2, cov1, cov2)):
        raise ValueError(
            "Gaussian statistics contain NaN or inf; check the features they came from."
        )
    # tr((C1 C2)^1/2) = sum of sqrt(eig(C1 C2)), and C1 C2 = S1 (S1 C2) has the eigenvalues of the
    # symmetric PSD matrix S1 C2 S1 (S1 = C1^1/2): real, and no complex sqrtm is needed.
    s1 = _sqrtm_psd((cov1 + cov1.T) / 2)
    m = s1 @ ((cov2 + cov2.T) / 2) @ s1
    eig = scipy.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (Heusel et al. 2017, FID)."""
    a, b = _as_pair(feats_a, feats_b, ("feats_a", "feats_b"), min_n=2)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def sliced_wasserstein(
    a: ArrayLike, b: ArrayLike, n_projections: int = 256, p: float = 2, seed: int = 0
) -> float:
    """Sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015), random directions."""
    a, b = _as_pair(a, b, ("a", "b"), min_n=1)
    if n_projections < 1 or p < 1:
        raise ValueError(f"need n_projections >= 1 and p >= 1, got {n_projections} and {p}.")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    theta = np.random.default_rng(seed).standard_normal((d, n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)  # (D, L) unit directions
    qa = np.sort(a @ theta, axis=0)  # (N, L) empirical quantiles of each 1-D projection
    qb = np.sort(b @ theta, axis=0)  # (M, L)
    # W_p^p = int_0^1 |F^-1(u) - G^-1(u)|^p du. Both quantile functions are step functions with
    # breaks at i/N and j/M, so on the merged grid of levels the integral is an exact finite sum.
    u = np.sort(np.concatenate([np.arange(n + 1) / n, np.arange(1, m) / m]))  # (N+M,)
    width, mid = np.diff(u), (u[:-1] + u[1:]) / 2
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    wpp = (width[:, None] * np.abs(qa[ia] - qb[ib]) ** p).sum(axis=0)  # (L,) W_p^p per direction
    return float(wpp.mean() ** (1.0 / p))


def _pairwise_dist(x: torch.Tensor, y: torch.Tensor):
    """Yields (row slice, distance block (rows, M)) for the rows of x, in memory-bounded chunks."""
    rows = max(1, _BLOCK_ELEMS // max(1, y.shape[0]))
    for i in range(0, x.shape[0], rows):
        yield slice(i, i + rows), torch.cdist(x[i : i + rows], y).clamp_min_(0.0)


def _rbf_sum(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Sum over all pairs of the Gaussian kernel exp(-|x - y|^2 / (2 h^2))."""
    total = 0.0
    for _, dist in _pairwise_dist(x, y):
        total += torch.exp(-dist.square() / (2.0 * bandwidth**2)).sum().item()
    return total


def _median_bandwidth(z: np.ndarray) -> float:
    """Median of pooled pairwise distances (i < j); a fixed-seed subsample for large pools."""
    if z.shape[0] > _MEDIAN_MAX_POINTS:
        keep = np.random.default_rng(0).choice(z.shape[0], _MEDIAN_MAX_POINTS, replace=False)
        z = z[keep]
    zt = torch.from_numpy(z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(torch.cdist(zt, zt)[iu[0], iu[1]].median())


def mmd(a: ArrayLike, b: ArrayLike, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """Squared MMD with a Gaussian RBF kernel (Gretton et al. 2012, Eq. 3 unbiased / Eq. 5 biased).

    `bandwidth` is the kernel's h in exp(-|x-y|^2 / (2 h^2)); None takes the median pairwise
    distance of the pooled samples (subsampled to 2048 points when larger). The unbiased
    U-statistic drops the i == j terms and can be slightly negative when a and b match.
    """
    a, b = _as_pair(a, b, ("a", "b"), min_n=2)
    if bandwidth is None:
        bandwidth = _median_bandwidth(np.concatenate([a, b]))
        if bandwidth <= 0.0:
            raise ValueError(
                "median heuristic gave bandwidth 0 (most samples are identical); "
                "pass bandwidth=<positive float> explicitly."
            )
    elif not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive finite float or None, got {bandwidth}.")
    n, m = a.shape[0], b.shape[0]
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    k_aa, k_bb = _rbf_sum(at, at, bandwidth), _rbf_sum(bt, bt, bandwidth)
    k_ab = _rbf_sum(at, bt, bandwidth)
    if unbiased:
        # k(x, x) = 1, so the diagonal of each within-set sum is exactly n (resp. m).
        return float((k_aa - n) / (n * (n - 1)) + (k_bb - m) / (m * (m - 1)) - 2.0 * k_ab / (n * m))
    return float(k_aa / n**2 + k_bb / m**2 - 2.0 * k_ab / (n * m))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (the point itself excluded)."""
    radii = torch.empty(x.shape[0], dtype=x.dtype)
    for rows, dist in _pairwise_dist(x, x):
        # The k+1 smallest include the point itself at distance ~0.
        radii[rows] = dist.topk(k + 1, dim=1, largest=False).values[:, -1]
    return radii


def _inside(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(len(query),) bool: whether each query row lies inside at least one k-NN hypersphere of ref."""
    out = torch.empty(query.shape[0], dtype=torch.bool)
    for rows, dist in _pairwise_dist(query, ref):
        out[rows] = (dist <= radii[None, :]).any(dim=1)
    return out


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of query rows inside at least one k-NN hypersphere of ref."""
    return float(_inside(query, ref, radii).double().mean())


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN hyperspheres.

    Precision: fraction of fake samples inside the k-NN manifold of real (fidelity).
    Recall: fraction of real samples inside the k-NN manifold of fake (coverage).
    """
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}; the paper uses k=3.")
    real, fake = _as_pair(real, fake, ("real", "fake"), min_n=k + 1)
    rt, ft = torch.from_numpy(real), torch.from_numpy(fake)  # (N, D), (M, D) float64
    precision = _coverage(ft, rt, _knn_radii(rt, k))
    recall = _coverage(rt, ft, _knn_radii(ft, k))
    return precision, recall


def _within_sums(x: torch.Tensor, degree: int, coef: float) -> torch.Tensor:
    """Row sums of the kernel matrix of x with itself, its diagonal excluded (memory-bounded blocks)."""
    d = x.shape[1]
    sums = torch.empty(x.shape[0], dtype=x.dtype)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[0]))
    for i in range(0, x.shape[0], rows):
        block = ((x[i : i + rows] @ x.T) / d + coef).pow(degree)
        sums[i : i + rows] = block.sum(1) - ((x[i : i + rows] ** 2).sum(1) / d + coef).pow(degree)
    return sums


def _kid_parts(a: np.ndarray, b: np.ndarray, degree: int, coef: float):
    """Row sums of the three kernel matrices (diagonals excluded from the within-set ones)."""
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    d = a.shape[1]

    def kernel(x, y):
        return ((x @ y.T) / d + coef).pow(degree)

    r_ab, r_ba = torch.zeros(a.shape[0], dtype=at.dtype), torch.zeros(b.shape[0], dtype=at.dtype)
    rows = max(1, _BLOCK_ELEMS // max(1, b.shape[0]))
    for i in range(0, a.shape[0], rows):
        block = kernel(at[i : i + rows], bt)
        r_ab[i : i + rows] = block.sum(1)
        r_ba += block.sum(0)
    return _within_sums(at, degree, coef).numpy(), _within_sums(bt, degree, coef).numpy(), r_ab.numpy(), r_ba.numpy()


def kid_and_se(a: ArrayLike, b: ArrayLike, degree: int = 3, coef: float = 1.0) -> tuple[float, float]:
    """:func:`kid` and its first-order standard error: the Hoeffding decomposition of a two-sample
    U-statistic (Lee 1990, *U-Statistics*, Sec. 2.2), Var ~ 4 Var(h_a)/n + 4 Var(h_b)/m with h the
    per-sample kernel means. Near KID = 0 the first-order term vanishes and the SE is a lower bound."""
    a, b = _as_pair(a, b, ("a", "b"), min_n=3)
    n, m = a.shape[0], b.shape[0]
    s_aa, s_bb, s_ab, s_ba = _kid_parts(a, b, degree, coef)
    value = s_aa.sum() / (n * (n - 1)) + s_bb.sum() / (m * (m - 1)) - 2.0 * s_ab.sum() / (n * m)
    h_a = s_aa / (n - 1) - s_ab / m
    h_b = s_bb / (m - 1) - s_ba / n
    se = math.sqrt(4.0 * h_a.var(ddof=1) / n + 4.0 * h_b.var(ddof=1) / m)
    return float(value), se


def kid(a: ArrayLike, b: ArrayLike, degree: int = 3, coef: float = 1.0) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 2.3): the
    unbiased squared MMD (Gretton et al. 2012, Eq. 3) with the cubic kernel k(x, y) = (x.y/D + 1)^3.

    Unlike the Fréchet distance it has an unbiased estimator, so its value does not depend on n in
    expectation and can be slightly negative when a and b come from one distribution.
    """
    return kid_and_se(a, b, degree, coef)[0]


# Above this many rows on a side the kernel matrices of a KID bootstrap get large (8 n^2 bytes):
# kid_metric then falls back to the first-order U-statistic SE.
_KID_BOOTSTRAP_MAX = 4096


def kid_metric(a: ArrayLike, b: ArrayLike, *, resamples: int = 200, seed: int = 0, degree: int = 3, coef: float = 1.0):
    """:func:`kid` as a ``Metric``. Its interval comes from a bootstrap of ``b`` (the generated set;
    ``a``, the reference, held fixed) over the precomputed kernel matrices: the first-order SE of
    :func:`kid_and_se` vanishes as KID -> 0 (a degenerate U-statistic) and then claims
    significance for noise. Sets larger than ``_KID_BOOTSTRAP_MAX`` use the first-order SE (then a
    lower bound near 0)."""
    from .intervals import bootstrap, from_se

    a, b = _as_pair(a, b, ("a", "b"), min_n=3)
    if max(len(a), len(b)) > _KID_BOOTSTRAP_MAX:
        return from_se(*kid_and_se(a, b, degree, coef), len(b))
    n = len(a)
    bt, at = torch.from_numpy(b), torch.from_numpy(a)
    within_a = float(_within_sums(at, degree, coef).sum()) / (n * (n - 1))  # the fixed reference's term
    k_bb = ((bt @ bt.T) / a.shape[1] + coef).pow(degree).numpy()  # (m, m)
    cross = ((at @ bt.T) / a.shape[1] + coef).pow(degree).mean(0).numpy()  # (m,): each b row's mean kernel to a

    def stat(ib: np.ndarray) -> float:  # the unbiased KID with b's rows ``ib`` (pairs at different positions)
        m = len(ib)
        s_bb = k_bb[np.ix_(ib, ib)].sum() - k_bb[ib, ib].sum()
        return within_a + s_bb / (m * (m - 1)) - 2.0 * cross[ib].mean()

    return bootstrap(stat, len(b), resamples=resamples, seed=seed)


def density_coverage(real: ArrayLike, fake: ArrayLike, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
    Generative Models", Eq. 3 and 4), on the k-NN balls of the *real* samples only.

    Density: the mean number of real balls a fake sample falls in, over k (about 1 when fake and
    real match; above 1 when fakes crowd dense regions). Coverage: the share of real balls that
    hold at least one fake sample (a collapsed generator covers few). Both are robust to the
    outliers that inflate k-NN precision and recall.
    """
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}; the paper uses k=5.")
    real, fake = _as_pair(real, fake, ("real", "fake"), min_n=k + 1)
    density, covered = _density_coverage_per_sample(torch.from_numpy(real), torch.from_numpy(fake), k)
    return float(density.mean()), float(covered.mean())


def _density_coverage_per_sample(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per fake sample: the number of real k-NN balls it lies in / k; per real ball: covered or not."""
    radii = _knn_radii(real, k)
    counts = torch.empty(fake.shape[0], dtype=torch.float64)
    covered = torch.zeros(real.shape[0], dtype=torch.bool)
    for rows, dist in _pairwise_dist(fake, real):
        inside = dist <= radii[None, :]
        counts[rows] = inside.sum(1).double() / k
        covered |= inside.any(dim=0)
    return counts.numpy(), covered.double().numpy()


def feature_quality(real: ArrayLike, fake: ArrayLike, *, k_pr: int = 3, k_dc: int = 5, resamples: int = 200,
                    seed: int = 0, strata: ArrayLike | None = None) -> dict:
    """Every set-level figure between real and generated features, each a ``Metric`` with its 95%
    interval: ``fd`` (grouped jackknife over the generated rows, ``intervals.jackknife``, stratified
    by ``strata`` when given), ``kid`` (first-order U-statistic SE, see
    :func:`kid_and_se`), ``precision``/``recall`` (Kynkäänniemi et al. 2019, k=3) and
    ``density``/``coverage`` (Naeem et al. 2020, k=5). The k-NN figures are means of per-sample
    indicators and get their intervals from a bootstrap over those samples, the k-NN balls held
    fixed. The reference set is held fixed throughout (FD and KID resample the generated set only):
    the intervals are for comparing rows scored against the same reference, whose own sampling
    noise is common to them all (resampling it too would drown a 270-image test split's rows in
    noise they share). ``strata`` (one label per generated row, e.g. the class each was asked for)
    keeps the FD jackknife's leave-outs to the design's proportions: features cluster by class, so
    an unstratified leave-out of a class-balanced set changes FD mostly by changing the class mix,
    which another balanced set never does (unstratified, ten times the spread between seeds on
    digits; docs/benchmarks/fd_interval.md)."""
    from .intervals import bootstrap_mean, jackknife

    real, fake = _as_pair(real, fake, ("real", "fake"), min_n=max(k_pr, k_dc) + 1)
    rt, ft = torch.from_numpy(real), torch.from_numpy(fake)
    stats_real = gaussian_stats(real)

    if strata is not None:
        strata = np.asarray(strata).reshape(-1)
        if len(strata) != len(fake):
            raise ValueError(f"strata has {len(strata)} labels for {len(fake)} generated rows")
    out = {"fd": jackknife(lambda ib: frechet_distance_from_stats(*stats_real, *gaussian_stats(fake[ib])), len(fake),
                           seed=seed, bounds=(0.0, math.inf), strata=strata)}
    out["kid"] = kid_metric(real, fake, resamples=resamples, seed=seed)
    unit = {"higher_is_better": True, "bounds": (0.0, 1.0), "resamples": resamples, "seed": seed}
    out["precision"] = bootstrap_mean(_inside(ft, rt, _knn_radii(rt, k_pr)).double().numpy(), **unit)
    out["recall"] = bootstrap_mean(_inside(rt, ft, _knn_radii(ft, k_pr)).double().numpy(), **unit)
    density, coverage = _density_coverage_per_sample(rt, ft, k_dc)
    out["density"] = bootstrap_mean(density, higher_is_better=True, bounds=(0.0, math.inf), resamples=resamples, seed=seed)
    out["coverage"] = bootstrap_mean(coverage, **unit)
    return out


def class_fd(real: ArrayLike, real_labels, fake: ArrayLike, fake_labels, *, groups: int = 50, seed: int = 0):
    """Per-class Fréchet distance: the mean over classes of FD(real of class c, fake of class c), a
    ``Metric`` whose interval is a grouped jackknife over the generated rows stratified by class
    (``intervals.jackknife``; the real rows held fixed, as ``feature_quality`` holds them). Unlike the
    pooled FD it does not forgive a model that draws the right images for the wrong label. Every
    class needs at least 2 real and 3 generated rows (a leave-out keeps 2)."""
    from .intervals import jackknife

    real, fake = _as_pair(real, fake, ("real", "fake"))
    ry, fy = np.asarray(real_labels).reshape(-1), np.asarray(fake_labels).reshape(-1)
    if len(ry) != len(real) or len(fy) != len(fake):
        raise ValueError(f"need one label per row: {len(ry)} labels for {len(real)} real, {len(fy)} for {len(fake)} fake")
    classes = np.unique(fy)
    real_stats = {}
    for c in classes:
        ir, jf = np.flatnonzero(ry == c), np.flatnonzero(fy == c)
        if len(ir) < 2 or len(jf) < 2:
            raise ValueError(f"class {c}: {len(ir)} real and {len(jf)} generated rows; per-class FD needs >= 2 of each")
        real_stats[c] = gaussian_stats(real[ir])

    def value(keep: np.ndarray) -> float:
        kept = fy[keep]
        return float(np.mean([frechet_distance_from_stats(*real_stats[c], *gaussian_stats(fake[keep[kept == c]])) for c in classes]))

    fewest = min(int((fy == c).sum()) for c in classes)
    if fewest < 3:  # a leave-out must keep >= 2 rows of every class
        raise ValueError(f"a class has {fewest} generated rows; the per-class FD's interval needs >= 3 per class")
    return jackknife(value, len(fake), groups=groups, strata=fy, seed=seed, bounds=(0.0, math.inf))


def paired_error(a: ArrayLike, b: ArrayLike, *, resamples: int = 1000, seed: int = 0):
    """Mean squared distance per dimension between paired rows (a student's sample and the
    reference solution from the same noise), a ``Metric`` bootstrapped over the pairs."""
    from .intervals import bootstrap_mean

    a, b = _as_pair(a, b, ("a", "b"), min_n=2)
    if a.shape != b.shape:
        raise ValueError(f"paired rows need the same shape, got {a.shape} and {b.shape}")
    return bootstrap_mean(((a - b) ** 2).mean(1), bounds=(0.0, math.inf), resamples=resamples, seed=seed)
