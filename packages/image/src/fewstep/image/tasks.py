"""Image tasks for cross-modality experiments (``fewstep.tasks`` entry points): ``digits``, ``shapes``.

Each is a shipped class-conditional teacher on its offline dataset, sampled class-balanced and
scored with this package's own evaluation: dFD (Fréchet distance, Heusel et al. 2017, on the shipped
classifier's features), class accuracy and improved precision/recall (Kynkäänniemi et al. 2019),
each with a 95% interval bootstrapped over the samples. The shipped classifier is the evaluation
network only: the experiment never hands it to a method as a reward or discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fewstep.core.tasks import Budget, Metric, Rule, Samples, Task, bootstrap, bootstrap_mean

from .data import DATASETS, load_dataset
from .distill import BUDGET, TRAJECTORIES

# Resamples for dFD: each one is a (D, D) matrix square root, so fewer than for a mean.
DFD_RESAMPLES = 200
K_NN = 3  # precision/recall's k (the paper's and fewstep.image.quality's)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (as fewstep.core.metrics.precision_recall)."""
    return torch.cdist(x, x).topk(k + 1, dim=1, largest=False).values[:, -1]  # (N,)


def _by_class(x: torch.Tensor, y: torch.Tensor, k: int, per: int = 2) -> torch.Tensor:
    """``per`` rows of one image per class 0..k-1 (black where a class has too few samples)."""
    out = torch.full((per * k, *x.shape[1:]), -1.0)
    for c in range(k):
        idx = torch.nonzero(torch.as_tensor(y) == c).flatten()[:per]
        out[torch.arange(len(idx)) * k + c] = x[idx].float()
    return out


class ImageTask(Task):
    """A shipped class-conditional image teacher and its dataset (``fewstep.image.data.DATASETS``)."""

    modality = "image"
    primary = "dfd"
    default_n = 500
    min_n = 20  # fewstep.image.evaluate.EvalConfig's floor for a meaningful dFD
    # fewstep-image distill's shared benchmark budget: 600 iterations, batch 64.
    budget = Budget(iterations=BUDGET.iterations, batch_size=BUDGET.batch_size, lr=BUDGET.lr,
                    ema_decay=BUDGET.ema_decay, warmup_iterations=BUDGET.warmup_iterations)

    def __init__(self, dataset: str, teacher_name: str, description: str):
        info = DATASETS[dataset]
        self.name, self.dataset, self.teacher_name = dataset, dataset, teacher_name
        self.description = f"{description}; teacher {teacher_name}"
        self.sample_shape = info.shape
        self.conditioning = f"class label ({info.num_classes} classes)"
        self.num_classes = info.num_classes

    def teacher(self):
        from .registry import load_model

        return load_model(self.teacher_name).eval()

    def data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (N, C, H, W) in [-1, 1], labels (N,)): "train" the training split, "eval" the test split."""
        if split not in ("train", "eval"):
            raise ValueError(f"split {split!r}: use 'train' or 'eval'")
        return load_dataset(self.dataset, "train" if split == "train" else "test")

    def trajectories(self):
        return TRAJECTORIES.get(self.dataset)

    def generate(self, model, rule: Rule, n: int, seed: int = 0, progress: bool = False) -> Samples:
        from fewstep.core.solvers import resolve_rule

        from .evaluate import EvalConfig, generate

        x, y, nfe, seconds = generate(model, EvalConfig(solver=rule.solver, num_steps=rule.num_steps, n=n, seed=seed))
        spec, steps, _, _ = resolve_rule(model, rule.solver, rule.num_steps)
        solver = spec.name
        return Samples((x, y), n, nfe, seconds, f"{solver}, {steps} step{'s' * (steps != 1)}")

    def reference(self, n: int, seed: int = 0) -> Samples:
        """``n`` random train images with their labels: the real-vs-real floor (as quality.real_data_baseline)."""
        x, y = load_dataset(self.dataset, "train")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        return Samples((x[idx], y[idx]), len(idx), 0.0, 0.0, "real train images")

    def evaluate(self, samples: Samples, seed: int = 0) -> dict[str, Metric]:
        """dFD, accuracy, precision and recall, bootstrapped over the samples (the real test split fixed)."""
        from threadpoolctl import threadpool_limits

        from fewstep.core.metrics import frechet_distance_from_stats, gaussian_stats

        from .quality import _test_features, check_samples, features_and_predictions

        x, y = samples.data
        feats, preds = features_and_predictions(self.dataset, check_samples(self.dataset, x))  # (N, D), (N,)
        f = feats.double()
        ref = _test_features(self.dataset).double()  # (N_test, D), cached per process
        n = len(f)
        if n <= K_NN:
            raise ValueError(f"{n} samples: precision/recall need more than k={K_NN}")
        mu_r, cov_r = gaussian_stats(ref)
        f_np = f.numpy()
        # Precision: is each sample inside the real k-NN manifold? Recall: which real images fall
        # inside each sample's k-NN ball (radii from the full sample: resampled duplicates would
        # shrink them to 0, so the balls stay those of the sample and only the set is resampled).
        in_real = (torch.cdist(f, ref) <= _knn_radii(ref, K_NN)[None, :]).any(1).numpy()  # (N,)
        covered = (torch.cdist(ref, f) <= _knn_radii(f, K_NN)[None, :]).numpy()  # (N_test, N)
        hits = (preds == torch.as_tensor(y)).numpy()
        # One BLAS thread: the small (D, D) eigh calls crawl on a busy CPU otherwise (see quality.py).
        with threadpool_limits(limits=1, user_api="blas"):
            dfd = bootstrap(lambda idx: frechet_distance_from_stats(mu_r, cov_r, *gaussian_stats(f_np[idx])), n,
                            resamples=DFD_RESAMPLES, seed=seed, bounds=(0.0, np.inf))
        unit = {"higher_is_better": True, "bounds": (0.0, 1.0), "seed": seed}
        return {
            "dfd": dfd,
            "accuracy": bootstrap_mean(hits, **unit),
            "precision": bootstrap_mean(in_real, **unit),
            "recall": bootstrap(lambda idx: covered[:, idx].any(1).mean(), n, **unit),
        }

    def picture(self, rows: Mapping[str, Samples], path: Path) -> Path:
        """One PNG grid: two rows of one sample per class for each entry of ``rows``, top to bottom."""
        from .demo import save_grid

        k = self.num_classes
        x = torch.cat([_by_class(*s.data, k) for s in rows.values()])  # (2 K * rows, C, H, W)
        path = Path(path)
        save_grid(x, path, nrow=k)
        return path


DIGITS = ImageTask("digits", "digits-teacher", "sklearn's handwritten digits, 16x16 grey, dFD on the shipped classifier")
SHAPES = ImageTask("shapes", "shapes-teacher", "synthetic coloured shapes, 32x32 RGB, dFD on the shipped classifier")

__all__ = ["DIGITS", "SHAPES", "ImageTask"]
