"""MMD-DDM: fine-tune a diffusion model for a K-step DDIM sampler with the MMD to real data.

Aiello, Valsesia & Magli 2023, "Fast Inference in Denoising Diffusion Models via MMD Finetuning"
(diegovalsesia/MMD-DDM). The model is fine-tuned so that its K-step DDIM samples x_hat = S_theta(z)
match the data in feature space, by the (squared) maximum mean discrepancy (Sec. 3)

    MMD^2(X, Y) = E k(x, x') + E k(y, y') - 2 E k(x, y),   x = phi(x_hat), y = phi(x_real),

with a Gaussian kernel on the features phi of a fixed network (the paper: Inception / CLIP
features). The gradient flows through the whole sampling chain; each step is recomputed in the
backward pass (``torch.utils.checkpoint``), so memory is one step's activations plus the K states.

Features. ``phi`` is a fixed callable ``phi(x) -> (B, F)`` given at run time: the objective's
``features`` field, or a ``features`` attachment the caller sets on the DistillModule (for images,
a classifier's feature map: ``module.attach("features", net.features)`` keeps it out of the
trained and checkpointed parameters). Without one, :class:`RandomProjection` is used: the flattened
sample itself when it has at most ``dim`` entries, else a fixed Gaussian random projection to
``dim`` (Johnson-Lindenstrauss: distances are kept up to a small factor). It is a stand-in that
makes MMD-DDM run anywhere; it is not a perceptual feature space.

Kernel: a sum of Gaussian kernels exp(-||a - b||^2 / (2 (c h)^2)) over bandwidth multiples c, with h
the median pairwise feature distance of the pooled batch (detached; the median heuristic). The MMD
is the biased (V-statistic) estimate: exactly 0 for identical sets and never negative. It is one
number per batch; the per-sample loss gives it to every sample (so the batch mean is the MMD^2).
Simplified against the paper: one fixed bandwidth set instead of a tuned one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..card import SamplerRule
from ..denoiser import Denoiser
from .base import Batch, DistillModule, Objective, randn, uniform_times
from ..updates import ddim_jump


class RandomProjection:
    """phi(x) = flatten(x) when it has <= ``dim`` entries, else flatten(x) @ W with a fixed
    W ~ N(0, 1 / dim) (seeded): a documented default feature map, not a perceptual one."""

    def __init__(self, dim: int = 256, seed: int = 0):
        self.dim, self.seed = int(dim), int(seed)
        self._w: dict[tuple[int, str], Tensor] = {}

    def __call__(self, x: Tensor) -> Tensor:
        x = x.flatten(1).float()
        d = x.shape[1]
        if d <= self.dim:
            return x
        key = (d, str(x.device))
        if key not in self._w:
            g = torch.Generator().manual_seed(self.seed)
            self._w[key] = (torch.randn(d, self.dim, generator=g) / self.dim**0.5).to(x.device)
        return x @ self._w[key]


def gaussian_mmd2(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Biased MMD^2 between feature sets x (N, F) and y (M, F) with a multi-bandwidth Gaussian kernel,
    bandwidths relative to the median pairwise distance of the pooled set (Gretton et al. 2012, MMD_b)."""
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)  # (N+M, N+M)
    h2 = d2.detach()[~torch.eye(len(z), dtype=torch.bool, device=z.device)].median().clamp(min=1e-12)
    k = sum(torch.exp(-d2 / (2.0 * c * c * h2)) for c in bandwidths)
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


@dataclass(frozen=True)
class MMDDDM(Objective):
    """MMD-DDM (Aiello et al. 2023): the teacher's copy fine-tuned so its K-step DDIM samples match
    real data by a feature-space MMD, backpropagating through the sampling chain (module doc).

    ``features``: the fixed feature map phi (not stored in the card); ``feature_dim``: the default
    random projection's size; ``bandwidths``: kernel widths as multiples of the median distance;
    ``checkpoint_steps``: recompute each sampling step in the backward pass (memory O(1) steps).
    """

    name: ClassVar[str] = "mmd-ddm"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = (
        "Aiello, Valsesia & Magli 2023, Fast Inference in Denoising Diffusion Models via MMD Finetuning, "
        "arXiv:2301.07969"
    )

    features: Callable[[Tensor], Tensor] | None = field(default=None, repr=False, compare=False)
    feature_dim: int = 256
    bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0)
    checkpoint_steps: bool = True

    def __post_init__(self):
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim={self.feature_dim} must be >= 1")
        bw = tuple(float(c) for c in self.bandwidths)
        if not bw or min(bw) <= 0:
            raise ValueError(
                f"bandwidths={self.bandwidths}: give at least one positive multiple of the median distance"
            )
        object.__setattr__(self, "bandwidths", bw)
        if self.features is not None and not callable(self.features):
            raise ValueError("features must be a callable x -> (B, F) feature map, or None for the random projection")

    def describe(self) -> dict[str, Any]:
        phi = self.features
        name = "random-projection" if phi is None else getattr(phi, "__qualname__", type(phi).__name__)
        return {
            "method": self.name,
            "features": name,
            "feature_dim": self.feature_dim,
            "bandwidths": list(self.bandwidths),
            "checkpoint_steps": self.checkpoint_steps,
        }

    def setup(self, module: DistillModule) -> None:
        # Held outside the module tree: a fixed map, neither trained nor checkpointed.
        if "features" not in module.attachments:
            module.attach("features", self.features or RandomProjection(self.feature_dim))

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """K DDIM steps on a uniform grid, the last one to t = 0."""
        return SamplerRule("ddim", uniform_times(teacher.schedule, steps))

    def generate(
        self, module: DistillModule, n: int, cond: Tensor | None, like: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The student's K-step DDIM samples from fresh noise, differentiable through every step."""
        student, sched = module.student, module.student.schedule
        grid = list(student.card.sampler.grid)
        x = randn((n, *like.shape[1:]), generator, like) * float(
            sched.sigma(torch.tensor(grid[0], dtype=torch.float64))
        )

        def step(x: Tensor, t: Tensor, s: Tensor) -> Tensor:  # one DDIM step (Song et al. 2021, Eq. 12)
            return ddim_jump(sched, x, student(x, t, cond), t, s)

        for t, s in itertools.pairwise(grid):
            tt = torch.full((n,), t, dtype=torch.float64, device=x.device)
            ss = torch.full_like(tt, s)
            if self.checkpoint_steps and torch.is_grad_enabled():
                x = checkpoint(step, x, tt, ss, use_reentrant=False)
            else:
                x = step(x, tt, ss)
        return x

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        phi = module.attachments.get("features") or self.features or RandomProjection(self.feature_dim)
        x_hat = self.generate(module, batch.size, batch.cond, batch.x0, generator)
        with torch.no_grad():
            y = phi(batch.x0)
        mmd2 = gaussian_mmd2(phi(x_hat), y, self.bandwidths)
        return mmd2.expand(batch.size)  # one value per batch, spread over its samples


__all__ = ["MMDDDM", "RandomProjection", "gaussian_mmd2"]
