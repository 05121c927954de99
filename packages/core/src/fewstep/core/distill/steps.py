"""Per-sample first-order steps between arbitrary times (B,): what distillation targets are made of.

The solvers' ``ddim_step`` takes one scalar time pair for the whole batch and a model; these take a
time per sample and a given x0, and include the exact clean end t = 0 (alpha = 1, sigma = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import _bcast
from ..schedules import Schedule


def alpha_sigma(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) for per-sample times t (B,), in t's dtype, exactly (1, 0) where t == 0."""
    zero = t == 0
    tt = torch.where(zero, torch.full_like(t, schedule.t_min), t)
    a = torch.where(zero, torch.ones_like(t), schedule.alpha(tt).to(t))
    s = torch.where(zero, torch.zeros_like(t), schedule.sigma(tt).to(t))
    return a, s


def ddim_jump(schedule: Schedule, x: Tensor, x0: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12, eta = 0) from (x, t) to s with a given x0, per sample; s = 0 gives x0."""
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    eps = (x - _bcast(a_t, x) * x0) / _bcast(s_t, x)
    return _bcast(a_s, x) * x0 + _bcast(s_s, x) * eps


def ddim_x0(schedule: Schedule, x: Tensor, t: Tensor, x_s: Tensor, s: Tensor) -> Tensor:
    """The x0 whose DDIM jump from (x, t) lands on x_s at s < t: the inverse of :func:`ddim_jump` in x0,
    x0 = (x_s - (sigma_s / sigma_t) x) / (alpha_s - (sigma_s / sigma_t) alpha_t). This is progressive
    distillation's two-step target x_tilde (Salimans & Ho 2022, Alg. 2) and multistep CD's x0-space
    target (Heek et al. 2024); at s = 0 it is x_s."""
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    r = s_s / s_t
    return (x_s - _bcast(r, x) * x) / _bcast(a_s - r * a_t, x)


def sde_step(schedule: Schedule, x: Tensor, x0: Tensor, t: Tensor, s: Tensor, eta: float, z: Tensor) -> Tensor:
    """SDE-DPM-Solver++(1) (Lu et al. 2022b, Sec. 5) with noise strength eta, per sample: DDIM with
    eta, x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c = eta sigma_s sqrt(1 - e^{-2h})."""
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    e_h = torch.where(s_s > 0, a_t * s_s / (s_t * a_s), 0.0)  # e^{-h}, h = lambda_s - lambda_t
    c = eta * s_s * torch.sqrt((1.0 - e_h**2).clamp(min=0.0))
    eps = (x - _bcast(a_t, x) * x0) / _bcast(s_t, x)
    return _bcast(a_s, x) * x0 + _bcast(torch.sqrt(s_s**2 - c**2), x) * eps + _bcast(c, x) * z
