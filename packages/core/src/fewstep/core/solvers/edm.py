"""EDM samplers (Karras et al. 2022): Euler (Alg. 1 without its correction) and the stochastic sampler (Alg. 2).

Both work in EDM variables for any schedule: x_bar = x / alpha and sigma_bar = sigma / alpha = exp(-lambda), where the
probability-flow ODE reads dx_bar/dsigma_bar = (x_bar - D(x_bar; sigma_bar)) / sigma_bar (Karras et al. 2022, Eq. 4
with s = 1). ``model(x, t)`` returns D in data space, which is the same in both variables.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor

from ..schedules import Schedule
from .common import Model, coeffs, is_zero


def noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (reproducible), then moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def sigma_bar(schedule: Schedule, t: Tensor) -> Tensor:
    """EDM noise level sigma/alpha at time t (Karras et al. 2022, Sec. 2: sigma(t) of the scaled process); 0 at t = 0."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.where(t == 0, 0.0, torch.exp(-schedule.lambda_(t.clamp(min=schedule.t_min))))


def time_at(schedule: Schedule, sb: Tensor) -> Tensor:
    """Inverse of :func:`sigma_bar`: the time whose EDM noise level is ``sb``, clamped to [t_min, t_max]."""
    t = schedule.inverse_lambda(-torch.log(torch.as_tensor(sb, dtype=torch.float64)))
    return t.clamp(schedule.t_min, schedule.t_max)


@torch.no_grad()
def sample_euler(model: Model, x: Tensor, ts: Tensor) -> Tensor:
    """Euler steps on the PF-ODE in EDM variables (Karras et al. 2022, Alg. 1 without the 2nd-order correction)."""
    for t, s in pairwise(ts):
        a_t, s_t, _ = coeffs(model, t)
        a_s, s_s, _ = coeffs(model, s)
        xb, sb_t, sb_s = x / a_t, s_t / a_t, s_s / a_s
        d = (xb - model(x, t)) / sb_t  # dx_bar/dsigma_bar (Eq. 4).
        x = (xb + (sb_s - sb_t) * d) * a_s  # Euler step.
    return x


@torch.no_grad()
def sample_edm_sde(
    model: Model,
    x: Tensor,
    ts: Tensor,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Karras et al. 2022, Alg. 2: raise the noise level by gamma (churn), then a Heun step down to the next time.

    ``S_tmin``/``S_tmax`` bound the churned noise levels in sigma_bar units, as in the paper. The raised level is
    capped at sigma_bar(t_max) so the model is never asked about times outside its schedule (EDM itself lets
    the first churned step exceed sigma_max). ``S_churn = 0`` is exactly EDM's deterministic Heun sampler.
    """
    sched = model.schedule
    n = len(ts) - 1
    sb_max = sigma_bar(sched, torch.tensor(sched.t_max, dtype=torch.float64, device=ts.device))
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)
    for t, s in pairwise(ts):
        a_t, s_t, _ = coeffs(model, t)
        a_s, s_s, _ = coeffs(model, s)
        xb, sb_t, sb_s = x / a_t, s_t / a_t, s_s / a_s
        gamma = gamma_max if S_tmin <= float(sb_t) <= S_tmax else 0.0
        sb_hat = torch.minimum(sb_t * (1.0 + gamma), sb_max)
        t_hat = t
        if gamma > 0 and sb_hat > sb_t:
            t_hat = time_at(sched, sb_hat)
            sb_hat = sigma_bar(sched, t_hat)  # the level the model will actually see
            eps = S_noise * noise(x, generator)
            xb = xb + torch.sqrt((sb_hat**2 - sb_t**2).clamp(min=0)) * eps  # Increase noise temporarily.
        a_hat = sched.alpha(t_hat)
        d = (xb - model(xb * a_hat, t_hat)) / sb_hat
        xb_next = xb + (sb_s - sb_hat) * d  # Euler step.
        if is_zero(s):  # Alg. 2: no correction into sigma = 0 (the Euler step gives x0).
            x = xb_next * a_s
            continue
        d2 = (xb_next - model(xb_next * a_s, s)) / sb_s
        x = (xb + (sb_s - sb_hat) * 0.5 * (d + d2)) * a_s  # 2nd order correction.
    return x
