"""First-order samplers: DDIM (deterministic and stochastic)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Model, coeffs


def ddim_step(
    model: Model, x: Tensor, t: Tensor, s: Tensor, eta: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """One DDIM step t -> s (Song et al. 2021, Eq. 12); eta = 1 is ancestral DDPM. Differentiable
    (no ``no_grad`` here), so distillation and pruning objectives can backpropagate through it."""
    a_t, s_t, l_t = coeffs(model, t)
    a_s, s_s, l_s = coeffs(model, s)
    x0 = model(x, t)
    eps = (x - a_t * x0) / s_t
    if eta == 0:
        return a_s * x0 + s_s * eps
    c = eta * s_s * torch.sqrt(-torch.expm1(-2.0 * (l_s - l_t)))  # stochastic part of sigma_s
    x = a_s * x0 + torch.sqrt(s_s**2 - c**2) * eps
    return x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@torch.no_grad()
def sample_ddim(model: Model, x: Tensor, ts: Tensor, eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12); eta = 1 is ancestral DDPM. Written with h = lambda_s - lambda_t."""
    for t, s in zip(ts[:-1], ts[1:]):
        x = ddim_step(model, x, t, s, eta, generator)
    return x
