"""The one home of the per-sample update formulas and parametrisation conversions.

With x_t = alpha_t x0 + sigma_t eps: conversions between the x0 / eps / v / flow parametrisations,
the forward noising, and the first-order moves between two times given an x0 prediction (DDIM,
its inverse in x0, and the ancestral / SDE step). Times may be one scalar for the batch (solvers)
or one per sample (B,) (distillation targets, rollouts), and include the exact clean end t = 0
(alpha = 1, sigma = 0). Solvers, rollouts, consistency targets, the Denoiser and TSDiff call these;
nothing else writes them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedules import Schedule


PREDICTIONS = ("eps", "x0", "v", "flow")


def _check_prediction(kind: str) -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; use one of {PREDICTIONS}")
    return kind


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    """(B,) or () coefficient -> shape broadcastable against x (B, ...)."""
    a = a.to(device=x.device, dtype=x.dtype)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if a.ndim else a


def to_x0_eps(pred: Tensor, kind: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Any parametrisation -> (x0, eps), given x = alpha x0 + sigma eps.

    v = alpha eps - sigma x0 (Salimans & Ho 2022); flow u = eps - x0 (rectified flow velocity).
    Both inversions hold for any (alpha, sigma), not only variance-preserving ones.
    """
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "v":
        n = a**2 + s**2
        return (a * x - s * pred) / n, (s * x + a * pred) / n
    if kind == "flow":
        n = a + s
        return (x - s * pred) / n, (x + a * pred) / n
    raise ValueError(f"unknown prediction type {kind!r}; use one of {PREDICTIONS}")


def from_x0_eps(x0: Tensor, eps: Tensor, kind: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """(x0, eps) -> the requested parametrisation."""
    a, s = _bcast(alpha, x0), _bcast(sigma, x0)
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    if kind == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction type {kind!r}; use one of {PREDICTIONS}")


def convert(pred: Tensor, src: str, dst: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a network output from parametrisation ``src`` to ``dst`` at (x, alpha, sigma)."""
    _check_prediction(dst)
    x0, eps = to_x0_eps(pred, _check_prediction(src), x, alpha, sigma)
    return from_x0_eps(x0, eps, dst, alpha, sigma)


def eps_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (x - alpha x0) / sigma, the noise an x0 prediction implies at (x, t)."""
    return (x - _bcast(alpha, x) * x0) / _bcast(sigma, x)


def noise_to(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_t = alpha(t) x0 + sigma(t) eps (the forward process), per-sample or scalar t."""
    return _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps


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
    return _bcast(a_s, x) * x0 + _bcast(s_s, x) * eps_from_x0(x, x0, a_t, s_t)


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
    """SDE-DPM-Solver++(1) (Lu et al. 2022b, Sec. 5) with noise strength eta: DDIM with eta (Song et
    al. 2021, Eq. 12; eta = 1 is ancestral DDPM), x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
    c = eta sigma_s sqrt(1 - e^{-2h}), h = lambda_s - lambda_t, z standard Gaussian noise."""
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    e_h = torch.where(s_s > 0, a_t * s_s / (s_t * a_s), 0.0)  # e^{-h}, h = lambda_s - lambda_t
    c = eta * s_s * torch.sqrt((1.0 - e_h**2).clamp(min=0.0))
    eps = eps_from_x0(x, x0, a_t, s_t)
    return _bcast(a_s, x) * x0 + _bcast(torch.sqrt(s_s**2 - c**2), x) * eps + _bcast(c, x) * z
