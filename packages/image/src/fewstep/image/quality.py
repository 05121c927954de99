"""Sample quality for image datasets: dFD (Fréchet distance, Heusel et al. 2017, on fewstep's own
classifier features), class accuracy, improved precision/recall (Kynkäänniemi et al. 2019).

The shipped classifier of each dataset and its features of the real test split are loaded once
per process and cached. Samples are (N, C, H, W) images in [-1, 1], like the datasets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
import torch
from fewstep.image.classifier import Classifier, classifier_path, load_classifier
from fewstep.image.data import dataset_info, load_dataset

# Samples may overshoot [-1, 1] a little (an unclamped sampler); beyond this they are an error.
RANGE_TOLERANCE = 0.5
FD_RESAMPLES = 200  # bootstrap resamples of the KID and k-NN figures (FD itself is jackknifed, stratified by class)
K_NN = 3  # precision/recall's k (Kynkäänniemi et al. 2019)


@dataclass(frozen=True)
class QualityReport:
    """Quality of n samples: dFD and precision/recall vs real data, classifier agreement."""

    dfd: float  # Fréchet distance of classifier features to the reference (lower is better)
    accuracy: float | None  # fraction classified as the requested label; None without labels
    precision: float  # fraction of samples inside the real feature manifold (k-NN, k=3)
    recall: float  # fraction of real images inside the samples' feature manifold
    class_histogram: tuple[int, ...]  # how many samples the classifier puts in each class
    n: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_histogram"] = list(self.class_histogram)
        return d


@cache
def shipped_classifier(dataset_name: str) -> Classifier:
    """The classifier shipped for a dataset (eval mode, CPU), loaded once per process."""
    return load_classifier(classifier_path(dataset_name))


def check_samples(dataset_name: str, samples, what: str = "samples") -> torch.Tensor:
    """Validate images for a dataset and return them as float32 CPU (N, C, H, W) in [-1, 1].

    Raises ValueError naming the expected shape and range when they do not fit (TypeError if
    not a tensor or array); values a little outside [-1, 1] (up to RANGE_TOLERANCE) are clamped.
    """
    info = dataset_info(dataset_name)
    want = f"(N, {info.channels}, {info.size}, {info.size})"
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"{what} must be a tensor or array {want}, got {type(samples).__name__}.")
    if samples.ndim != 4 or tuple(samples.shape[1:]) != info.shape or len(samples) < 1:
        raise ValueError(
            f"{what} for {dataset_name!r} must have shape {want}, got {tuple(samples.shape)}."
        )
    if not samples.is_floating_point():
        raise ValueError(f"{what} must be floating point in [-1, 1], got dtype {samples.dtype}.")
    x = samples.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"{what}: {bad} of {len(x)} images contain NaN or inf.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{what} must be images in [-1, 1] (like fewstep datasets), got values in "
            f"[{lo:.3g}, {hi:.3g}]; map [0, 1] images with 2 * x - 1 and clamp sampler output."
        )
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def features_and_predictions(
    dataset_name: str, x: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier features (N, feat_dim) and predicted labels (N,) of valid images x."""
    model = shipped_classifier(dataset_name)
    feats, preds = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i : i + batch_size])  # (B, feat_dim)
        feats.append(f)
        preds.append(model.head(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


@cache
def _test_features(dataset_name: str) -> torch.Tensor:
    """Features (N_test, feat_dim) of the real test split: the default dFD reference."""
    x, _ = load_dataset(dataset_name, "test")
    return features_and_predictions(dataset_name, x)[0]


@cache
def _test_labels(dataset_name: str) -> torch.Tensor:
    """Labels (N_test,) of the real test split, row for row with ``_test_features``."""
    return load_dataset(dataset_name, "test")[1]


def _check_labels(dataset_name: str, labels, n: int) -> torch.Tensor:
    k = dataset_info(dataset_name).num_classes
    y = torch.as_tensor(labels)
    if y.shape != (n,) or y.is_floating_point() or y.is_complex():
        raise ValueError(
            f"labels must be integers of shape ({n},), got {y.dtype} {tuple(y.shape)}."
        )
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}) for {dataset_name!r}.")
    return y.to("cpu", torch.int64)


def evaluate_samples(
    dataset_name: str, samples, labels=None, reference=None, k: int = 3
) -> QualityReport:
    """dFD, accuracy, precision/recall and predicted-class histogram of generated samples.

    samples: (N, C, H, W) in [-1, 1] for the dataset; labels: (N,) requested classes, or None
    for unconditional samples (accuracy is then None); reference: real images to compare with,
    default the dataset's test split. N should exceed k; dFD needs a few hundred to be stable.
    """
    from fewstep.core.metrics import frechet_distance, precision_recall
    from threadpoolctl import threadpool_limits

    info = dataset_info(dataset_name)
    x = check_samples(dataset_name, samples)
    y = None if labels is None else _check_labels(dataset_name, labels, len(x))
    if reference is None:
        ref_feats = _test_features(dataset_name)
    else:
        ref_feats = features_and_predictions(
            dataset_name, check_samples(dataset_name, reference, "reference")
        )[0]
    feats, preds = features_and_predictions(dataset_name, x)  # (N, D), (N,)
    # BLAS threads only slow the small (D, D) eigh calls of the metrics, badly so on a busy
    # CPU (OpenBLAS spin-waits: 0.5 s instead of 2 ms for D=128), so they run on one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        precision, recall = precision_recall(ref_feats, feats, k=k)
        dfd = frechet_distance(ref_feats, feats)
    return QualityReport(
        dfd=dfd,
        accuracy=None if y is None else float((preds == y).float().mean()),
        precision=float(precision),
        recall=float(recall),
        class_histogram=tuple(int(c) for c in torch.bincount(preds, minlength=info.num_classes)),
        n=len(x),
    )


@cache
def _reward_train_features(dataset_name: str) -> torch.Tensor:
    x, _ = load_dataset(dataset_name, "train")
    return _features(_reward_net(dataset_name), x)


@cache
def _reward_net(dataset_name: str):
    return load_classifier(classifier_path(dataset_name, "reward"))


@torch.no_grad()
def _features(model, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def proxy_fd(dataset_name: str, samples) -> float:
    """FD in the reward classifier's features against the train split: the score searches and
    tuners may optimise. dFD (evaluation classifier, test split) stays out of their reach."""
    from fewstep.core.metrics import frechet_distance
    from threadpoolctl import threadpool_limits

    feats = _features(_reward_net(dataset_name), check_samples(dataset_name, samples))
    with threadpool_limits(limits=1, user_api="blas"):
        return frechet_distance(_reward_train_features(dataset_name), feats)


@cache
def real_data_baseline(dataset_name: str, n: int | None = 2000, seed: int = 0) -> QualityReport:
    """The floor: the report of n random real train images (None: all) vs the test split.

    Generated samples cannot be expected to beat this dFD. Compare at the same n: the Fréchet
    distance of a finite sample is biased upwards, more so for small n. n is capped at the
    train split's size (digits: 1527; shapes: 12000, whose features take a while on a CPU).
    """
    x, y = load_dataset(dataset_name, "train")
    if n is not None and n < len(x):
        if n < 1:
            raise ValueError(f"n must be positive (or None for the whole train split), got {n}.")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return evaluate_samples(dataset_name, x, y)


def score_samples(dataset_name: str, samples, labels, seed: int = 0) -> dict:
    """The evaluation protocol of an image dataset: {name: Metric with its 95% interval} of
    class-balanced samples against the real test split, in the evaluation classifier's features.

    dfd and kid (``fewstep.core.metrics.feature_quality``: the reference held fixed), precision and
    recall (k=3), density and coverage (k=5), class accuracy, and class_fd (the per-class FD) when
    every class has at least 3 samples (its jackknife leaves rows out). Needs more than 5 samples.
    """
    return scored_samples(dataset_name, samples, labels, seed)[0]


def scored_samples(dataset_name: str, samples, labels, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """:func:`score_samples` and the classifier's predicted class of each sample (N,), from one
    pass of the evaluation classifier."""
    from fewstep.core.intervals import bootstrap_mean
    from fewstep.core.metrics import class_fd, feature_quality
    from threadpoolctl import threadpool_limits

    x = check_samples(dataset_name, samples)
    y = _check_labels(dataset_name, labels, len(x))
    if len(x) <= 5:
        raise ValueError(f"{len(x)} samples: density/coverage need more than k=5")
    feats, preds = features_and_predictions(dataset_name, x)  # (N, D), (N,)
    f, ref = feats.double(), _test_features(dataset_name).double()  # the test split's, cached per process
    # One BLAS thread: the small (D, D) eigh calls crawl on a busy CPU otherwise (see evaluate_samples).
    with threadpool_limits(limits=1, user_api="blas"):
        q = feature_quality(ref, f, k_pr=K_NN, resamples=FD_RESAMPLES, seed=seed, strata=y.numpy())  # the labels asked for
        out = {"dfd": q.pop("fd"), **q}
        out["accuracy"] = bootstrap_mean((preds == y).numpy(), higher_is_better=True, bounds=(0.0, 1.0), seed=seed)
        if torch.bincount(y, minlength=dataset_info(dataset_name).num_classes).min() >= 3:
            out["class_fd"] = class_fd(ref, _test_labels(dataset_name), f, y, seed=seed)
    return out, preds
