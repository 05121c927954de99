"""Image tasks for cross-modality experiments (``fewstep.tasks`` entry points): ``digits``, ``shapes``, ``photos``.

Each is a shipped class-conditional teacher on its offline dataset, sampled class-balanced and
scored with this package's own evaluation against the real test split: dFD (Fréchet distance,
Heusel et al. 2017, on the shipped classifier's features) and KID (Bińkowski et al. 2018), improved
precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020), class accuracy and
the per-class FD, each with its 95% interval; plus FD to the teacher's own best samples and, for
trajectory students, the paired error to the teacher's 250-step solution from the same noise. The
shipped classifier is the evaluation network only: the experiment never hands it to a method as a
reward or discriminator (methods that need one get the reward classifier).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fewstep.core.tasks import Budget, Metric, Rule, Samples, Task

from .data import DATASETS, balanced_indices, load_dataset
from .distill import BUDGET, TRAJECTORIES


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

    def best_rule(self) -> Rule:
        """DDPM ancestral sampling at 250 steps: the shipped teachers' best figures (docs/benchmarks/teachers.md)."""
        return Rule("ddpm", 250)

    def reference_rule(self) -> Rule:
        """The 250-step deterministic solution from the same noise (a trajectory student's target)."""
        return Rule("dpmpp_2m", 250)

    def reference(self, n: int, seed: int = 0) -> Samples:
        """``n`` random train images, class-balanced like the samples: the real-vs-real floor."""
        x, y = load_dataset(self.dataset, "train")
        idx = balanced_indices(y, n, self.num_classes, seed)
        return Samples((x[idx], y[idx]), len(idx), 0.0, 0.0, "real train images (class-balanced)")

    def collapse(self, n: int, seed: int = 0) -> Samples:
        """One real train image per class, repeated to ``n`` (class-balanced labels)."""
        x, y = load_dataset(self.dataset, "train")
        labels = torch.arange(n) % self.num_classes
        first = torch.stack([torch.nonzero(y == c)[0, 0] for c in range(self.num_classes)])
        return Samples((x[first[labels]], labels), n, 0.0, 0.0, "one real image per class, repeated")

    def _features(self, samples: Samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .quality import check_samples, features_and_predictions

        x, y = samples.data
        feats, preds = features_and_predictions(self.dataset, check_samples(self.dataset, x))  # (N, D), (N,)
        return feats.double(), preds, torch.as_tensor(y)

    def evaluate(self, samples: Samples, seed: int = 0) -> dict[str, Metric]:
        """Against the real test split, in the evaluation classifier's features (``quality.score_samples``):
        dFD and KID, precision/recall, density/coverage, accuracy and the per-class FD."""
        from .quality import score_samples

        return score_samples(self.dataset, *samples.data, seed=seed)

    def distance(self, samples: Samples, to: Samples, seed: int = 0) -> Metric:
        """FD between two sample sets in the evaluation classifier's features (both jackknifed, ``jackknife_two``)."""
        from threadpoolctl import threadpool_limits

        from fewstep.core.intervals import jackknife_two
        from fewstep.core.metrics import frechet_distance_from_stats, gaussian_stats

        (a, _, ya), (b, _, yb) = self._features(samples), self._features(to)
        a, b = a.numpy(), b.numpy()
        with threadpool_limits(limits=1, user_api="blas"):  # both sets class-balanced by design: stratified
            return jackknife_two(lambda i, j: frechet_distance_from_stats(*gaussian_stats(a[i]), *gaussian_stats(b[j])),
                                 len(a), len(b), seed=seed, bounds=(0.0, np.inf), strata_a=ya.numpy(), strata_b=yb.numpy())

    def paired(self, samples: Samples, to: Samples, seed: int = 0) -> Metric:
        """Per-pixel MSE between samples and the reference drawn from the same noise (same n, seed)."""
        from fewstep.core.metrics import paired_error

        (a, _), (b, _) = samples.data, to.data
        return paired_error(a.flatten(1), b.flatten(1), seed=seed)

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
PHOTOS = ImageTask("photos", "photos-teacher", "32x32 crops of scikit-image's bundled photographs (14 classes, one per photo), "
                   "dFD on the shipped classifier")


__all__ = ["DIGITS", "PHOTOS", "SHAPES", "ImageTask"]
