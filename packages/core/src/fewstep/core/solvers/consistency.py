"""Multistep consistency sampling (Song et al. 2023, Algorithm 1), the sampling rule of consistency students."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Model, coeffs, is_zero


@torch.no_grad()
def sample_consistency(model: Model, x: Tensor, ts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x0 = f(x, t_0); then for each later grid time t_k (before a final 0): re-noise
    x = alpha_k x0 + sigma_k z with fresh z and jump again, x0 = f(x, t_k). Spends one NFE per
    interval, like DDIM; the grid's last time (0 or t_min) is where the sample is returned.
    """
    x0 = model(x, ts[0])
    for t in ts[1:-1]:
        if is_zero(t):
            break
        a, s, _ = coeffs(model, t)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x0 = model(a.to(x0.dtype) * x0 + s.to(x0.dtype) * z, t)
    if not is_zero(ts[-1]):  # a grid ending at t_min: return the sample noised to t_min, as others do
        a, s, _ = coeffs(model, ts[-1])
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return a.to(x0.dtype) * x0 + s.to(x0.dtype) * z
    return x0
