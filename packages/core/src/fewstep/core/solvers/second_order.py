"""Second-order samplers: EDM's Heun and DPM-Solver++(2M)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Model, coeffs


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, ts: Tensor) -> Tensor:
    """Heun's 2nd-order method on the EDM ODE (Karras et al. 2022, Alg. 1) in x/alpha, sigma/alpha."""
    for t, s in zip(ts[:-1], ts[1:]):
        a_t, s_t, _ = coeffs(model, t)
        a_s, s_s, _ = coeffs(model, s)
        xb, sb_t, sb_s = x / a_t, s_t / a_t, s_s / a_s
        d = (xb - model(x, t)) / sb_t
        xb_next = xb + (sb_s - sb_t) * d  # Euler step.
        d2 = (xb_next - model(xb_next * a_s, s)) / sb_s  # 2nd order correction.
        x = (xb + (sb_s - sb_t) * 0.5 * (d + d2)) * a_s
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, ts: Tensor, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): multistep data-prediction exponential integrator."""
    x0_prev, h_prev = None, None
    n = len(ts) - 1
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        a_t, s_t, l_t = coeffs(model, t)
        a_s, s_s, l_s = coeffs(model, s)
        h = l_s - l_t
        x0 = model(x, t)
        first = x0_prev is None or (lower_order_final and i == n - 1 and n < 15)
        if first:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (s_s / s_t) * x - a_s * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x
