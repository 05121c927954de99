"""Second-order samplers: EDM's Heun; DPM-Solver++(2M) lives in ``multistep.py`` (re-exported here)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from .common import Model, coeffs, is_zero
from .multistep import sample_dpmpp_2m

__all__ = ["sample_dpmpp_2m", "sample_heun"]


@torch.no_grad()
def sample_heun(model: Model, x: Tensor, ts: Tensor) -> Tensor:
    """Heun's 2nd-order method on the EDM ODE (Karras et al. 2022, Alg. 1) in x/alpha, sigma/alpha."""
    for t, s in pairwise(ts):
        a_t, s_t, _ = coeffs(model, t)
        a_s, s_s, _ = coeffs(model, s)
        xb, sb_t, sb_s = x / a_t, s_t / a_t, s_s / a_s
        d = (xb - model(x, t)) / sb_t
        xb_next = xb + (sb_s - sb_t) * d  # Euler step.
        if is_zero(s):  # Alg. 1 line 8: no correction into sigma = 0 (the Euler step gives x0).
            x = xb_next * a_s
            continue
        d2 = (xb_next - model(xb_next * a_s, s)) / sb_s  # 2nd order correction.
        x = (xb + (sb_s - sb_t) * 0.5 * (d + d2)) * a_s
    return x
