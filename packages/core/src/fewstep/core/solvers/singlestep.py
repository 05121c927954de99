"""Single-step DPM-Solver-1/2/3 (Lu et al. 2022), in the noise-prediction form of the paper.

Each grid interval [t_{i}, t_{i+1}] is one step of order k that spends k NFE (k - 1 of them at
intermediate times placed by lambda: s1 = lambda^-1(lambda_t + r1 h), ...). So ``steps`` counts
grid intervals and the cost is ``order * steps`` NFE (the Denoiser's ``nfe`` counter says so too);
to compare with a multistep solver at equal NFE, give this one ``steps // order``.

Notation follows the paper: step from t (noisier) to s (cleaner) is written there as
t_{i-1} -> t_i; here ``t`` -> ``s``, h = lambda_s - lambda_t > 0, eps = (x - alpha x0) / sigma.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from .common import Model, coeffs, is_zero


def _eps(model: Model, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """Noise prediction eps = (x - alpha x0) / sigma from the data-prediction model."""
    return (x - a * model(x, t)) / s


def _mid(model: Model, l_t: Tensor, r: float, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The intermediate time s_r = lambda^-1(lambda_t + r h), its (alpha, sigma) and its actual r.

    The formulas hold for any r, so r is recomputed from lambda(s_r): an inexact ``inverse_lambda``
    (e.g. arccos near t = 0) then moves the intermediate point instead of adding an error floor.
    """
    t_r = model.schedule.inverse_lambda(l_t + r * h)
    a_r, s_r, l_r = coeffs(model, t_r)
    return t_r, a_r, s_r, (l_r - l_t) / h


def dpm_solver_1_step(x: Tensor, eps: Tensor, a_t: Tensor, a_s: Tensor, s_s: Tensor, h: Tensor) -> Tensor:
    """DPM-Solver-1 (Lu et al. 2022, Eq. 3.7): x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps."""
    return (a_s / a_t) * x - s_s * torch.expm1(h) * eps


@torch.no_grad()
def sample_dpm_solver(
    model: Model, x: Tensor, ts: Tensor, order: int = 3, r1: float | None = None, r2: float | None = None
) -> Tensor:
    """DPM-Solver-1/2/3 single-step (Lu et al. 2022, Eq. 3.7, Alg. 1 and Alg. 2); ``order`` NFE per interval.

    r1 = 1/2 for order 2 (DPM-Solver-2, the midpoint in lambda); r1 = 1/3, r2 = 2/3 for order 3.
    An interval that ends at t = 0 is a denoising step x <- x0(x, t) (one NFE).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    r1 = r1 if r1 is not None else (0.5 if order == 2 else 1.0 / 3.0)
    r2 = r2 if r2 is not None else 2.0 / 3.0
    for t, s in pairwise(ts):
        if is_zero(s):
            x = model(x, t)  # Denoising step.
            continue
        a_t, s_t, l_t = coeffs(model, t)
        a_s, s_s, l_s = coeffs(model, s)
        h = l_s - l_t
        eps_t = _eps(model, x, t, a_t, s_t)
        if order == 1:
            x = dpm_solver_1_step(x, eps_t, a_t, a_s, s_s, h)
        elif order == 2:
            # Alg. 1: first-order step to s1, then a correction with the slope difference.
            t1, a1, s1, q1 = _mid(model, l_t, r1, h)
            u1 = dpm_solver_1_step(x, eps_t, a_t, a1, s1, q1 * h)
            d1 = _eps(model, u1, t1, a1, s1) - eps_t
            x = dpm_solver_1_step(x, eps_t, a_t, a_s, s_s, h) - s_s / (2 * q1) * torch.expm1(h) * d1
        else:
            # Alg. 2: two intermediate points s1, s2; the last uses phi_2-type weights.
            t1, a1, s1, q1 = _mid(model, l_t, r1, h)
            t2, a2, s2, q2 = _mid(model, l_t, r2, h)
            u1 = dpm_solver_1_step(x, eps_t, a_t, a1, s1, q1 * h)
            d1 = _eps(model, u1, t1, a1, s1) - eps_t
            phi_2_r2 = torch.expm1(q2 * h) / (q2 * h) - 1  # (e^{r2 h} - 1) / (r2 h) - 1
            u2 = dpm_solver_1_step(x, eps_t, a_t, a2, s2, q2 * h) - s2 * (q2 / q1) * phi_2_r2 * d1
            d2 = _eps(model, u2, t2, a2, s2) - eps_t
            phi_2 = torch.expm1(h) / h - 1
            x = dpm_solver_1_step(x, eps_t, a_t, a_s, s_s, h) - s_s / q2 * phi_2 * d2
    return x
