"""Teacher training objective: denoising score matching in the model's own parametrisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .denoiser import Denoiser
from .updates import from_x0_eps, noise_to


@dataclass(frozen=True)
class DenoisingLoss:
    """Denoising loss ||D(x_t, t) - target||^2 (Ho et al. 2020, Eq. 14; v-target: Salimans & Ho 2022).

    t is drawn uniformly in [t_min, t_max] of the schedule (continuous time); the regression
    target is the parametrisation the network outputs, so the loss is the usual eps-/v-/x0-/flow-MSE.
    Returns the unreduced per-sample loss (B,).
    """

    def __call__(self, model, denoiser: Denoiser, x0: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        sched = denoiser.schedule
        b = x0.shape[0]
        u = torch.rand(b, generator=generator, dtype=torch.float64).to(x0.device)
        t = sched.t_min + (sched.t_max - sched.t_min) * u
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        alpha, sigma = denoiser.coefficients(t)
        x_t = noise_to(sched, x0, t, eps)
        target = from_x0_eps(x0, eps, denoiser.prediction, alpha, sigma)
        pred = model(x_t, t, cond, kind=denoiser.prediction)  # model may be the DDP wrapper
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
