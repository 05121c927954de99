"""The fake-score critic and the distribution-matching gradient, shared by every objective that needs
a reverse-divergence term (rCM's regulariser, Hyper-SD's one-step score stage, and the
distribution-matching family of DMD / DMD2 / SIM).

DMD (Yin et al. 2024, Eq. 7-8): for a generated sample x, noise it to x_t, and follow
grad = (x0_fake(x_t) - x0_real(x_t)) / mean|x - x0_real(x_t)|: the difference of the two scores
s = (alpha x0 - x_t) / sigma^2 up to the positive weight alpha / sigma^2, normalised per sample as
in the paper. The fake score is a copy of the teacher trained by plain denoising on the detached
student samples; the real score is the frozen teacher.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser, from_x0_eps
from .base import copy_net, noise_to, randn


def make_fake_score(teacher: Denoiser) -> Denoiser:
    """A trainable copy of the teacher that will track the student's distribution."""
    return Denoiser(
        copy_net(teacher.net),
        teacher.schedule,
        teacher.prediction,
        sample_shape=teacher.sample_shape,
        num_classes=teacher.num_classes,
        clip_x0=teacher.clip_x0,
    )


def sample_times(schedule, n: int, generator: torch.Generator, lo: float = 0.02, hi: float = 0.98, device=None) -> Tensor:
    """t uniform in [lo, hi] of the schedule's [t_min, t_max] (DMD's T_min/T_max = 0.02/0.98)."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return (schedule.t_min + (schedule.t_max - schedule.t_min) * u).to(device)


def fake_score_loss(fake: Denoiser, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
    """Denoising loss of the fake score on detached generated samples, per sample (B,)."""
    x = x.detach()
    t = sample_times(fake.schedule, x.shape[0], generator, 0.0, 1.0, x.device)
    eps = randn(x.shape, generator, x)
    alpha, sigma = fake.coefficients(t)
    target = from_x0_eps(x, eps, fake.prediction, alpha, sigma)
    pred = fake(noise_to(fake.schedule, x, t, eps), t, cond, kind=fake.prediction)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


@torch.no_grad()
def dmd_direction(
    real: Denoiser,
    fake: Denoiser,
    x: Tensor,
    cond: Tensor | None,
    generator: torch.Generator,
    guidance: float = 1.0,
    t: Tensor | None = None,
) -> Tensor:
    """The normalised DMD update direction at generated samples x (DMD Eq. 8): x moves along -grad."""
    x = x.detach()
    if t is None:
        t = sample_times(real.schedule, x.shape[0], generator, device=x.device)
    x_t = noise_to(real.schedule, x, t, randn(x.shape, generator, x))
    was = fake.training
    fake.eval()
    x0_fake = fake(x_t, t, cond)
    fake.train(was)
    x0_real = real(x_t, t, cond, guidance)
    weight = (x - x0_real).abs().flatten(1).mean(1).clamp(min=1e-4)
    return (x0_fake - x0_real) / weight.view(-1, *([1] * (x.ndim - 1)))


def dmd_loss(x: Tensor, direction: Tensor) -> Tensor:
    """0.5 ||x - sg(x - direction)||^2 per sample: its gradient w.r.t. x is ``direction`` (B,)."""
    target = (x - direction).detach()
    return 0.5 * (x.float() - target.float()).pow(2).flatten(1).sum(1)
