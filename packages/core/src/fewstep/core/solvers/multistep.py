"""Multistep DPM-Solver++ (Lu et al. 2022b): 2M, 3M and the SDE variant SDE-DPM-Solver++(2M).

Data-prediction exponential integrators that reuse the x0 predictions of earlier steps, so every
step costs one NFE. History lives in local lists; the order of step i of n is
``step_order(order, i, n, lower_order_final and n < 15, t_{i+1})`` (diffusers'
``DPMSolverMultistepScheduler`` rule: warm up from first order, the last two steps of a short
run at most orders 1 and 2, and first order into t = 0, which returns the x0 prediction).

Notation: a step goes t_i -> t_{i+1}; h = lambda_{i+1} - lambda_i; r_k = h_{i-k} / h.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from .common import Model, coeffs, step_order

LOWER_ORDER_BELOW = 15  # lower_order_final applies to runs with fewer steps (diffusers' threshold)


def _taylor(x0s: list[Tensor], hs: list[Tensor], p: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Divided differences in lambda from the last p x0's: D0 = x0, D1 ~ h x0', D2 ~ h^2 x0''/2."""
    d0 = x0s[-1]
    if p == 1:
        return d0, None, None
    h = hs[-1]
    r0 = hs[-2] / h
    d1_0 = (x0s[-1] - x0s[-2]) / r0
    if p == 2:
        return d0, d1_0, None
    r1 = hs[-3] / h
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return d0, d1, d2


def _dpmpp_multistep(
    model: Model, x: Tensor, ts: Tensor, order: int, lower_order_final: bool, diffusers_d2: bool = False
) -> Tensor:
    """DPM-Solver++ multistep of order 1-3 (Lu et al. 2022b), one x0 evaluation per step."""
    x0s: list[Tensor] = []
    hs: list[Tensor] = []  # hs[k] = lambda_{k+1} - lambda_k; the current step's h is appended first
    n = len(ts) - 1
    lower_final = lower_order_final and n < LOWER_ORDER_BELOW
    for i, (t, s) in enumerate(pairwise(ts)):
        _, s_t, l_t = coeffs(model, t)
        a_s, s_s, l_s = coeffs(model, s)
        h = l_s - l_t
        x0s.append(model(x, t))
        hs.append(h)
        p = step_order(order, i, n, lower_final, s)
        d0, d1, d2 = _taylor(x0s, hs, p)
        phi_1 = torch.expm1(-h)  # e^{-h} - 1
        x = (s_s / s_t) * x - a_s * phi_1 * d0  # DPM-Solver++(1) = DDIM.
        if d1 is not None and p == 2:
            x = x - 0.5 * a_s * phi_1 * d1  # 2M (Alg. 2, midpoint form).
        elif d1 is not None:
            phi_2 = phi_1 / h + 1
            phi_3 = phi_2 / h - 0.5
            # 3M: x0 ~ D0 + D1 u/h + D2 (u/h)^2 integrates to weights -phi_1, phi_2, -2 phi_3. The
            # dpm-solver / diffusers / k-diffusion code weighs D2 by -phi_3 (half), which leaves an
            # O(h^3) local error: their 3M converges at order 2. ``diffusers_d2`` reproduces it.
            x = x + a_s * phi_2 * d1 - (1.0 if diffusers_d2 else 2.0) * a_s * phi_3 * d2
        del x0s[:-2], hs[:-2]
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: Tensor, ts: Tensor, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): multistep data-prediction exponential integrator."""
    return _dpmpp_multistep(model, x, ts, 2, lower_order_final)


@torch.no_grad()
def sample_dpmpp_3m(
    model: Model, x: Tensor, ts: Tensor, lower_order_final: bool = True, diffusers_d2: bool = False
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b; 3rd-order multistep): x0 extrapolated quadratically in lambda.

    ``diffusers_d2=True`` matches diffusers' ``DPMSolverMultistepScheduler(solver_order=3)`` exactly,
    including its half weight on the second difference (see ``_dpmpp_multistep``).
    """
    return _dpmpp_multistep(model, x, ts, 3, lower_order_final, diffusers_d2)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Model,
    x: Tensor,
    ts: Tensor,
    lower_order_final: bool = True,
    solver_type: str = "midpoint",
    generator: torch.Generator | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b; diffusers' ``sde-dpmsolver++``): 2M on the reverse SDE.

    The linear part of the data-prediction SDE is solved exactly: the sample decays by
    (sigma_s / sigma_t) e^{-h}, x0 enters with weight alpha_s (1 - e^{-2h}) and fresh noise with
    sigma_s sqrt(1 - e^{-2h}). ``solver_type`` "midpoint" (diffusers' default) or "heun" weights D1.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type={solver_type!r}; use 'midpoint' or 'heun'")
    x0_prev, h_prev = None, None
    n = len(ts) - 1
    lower_final = lower_order_final and n < LOWER_ORDER_BELOW
    for i, (t, s) in enumerate(pairwise(ts)):
        _, s_t, l_t = coeffs(model, t)
        a_s, s_s, l_s = coeffs(model, s)
        h = l_s - l_t
        x0 = model(x, t)
        p = step_order(2, i, n, lower_final, s)
        one_m = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}
        x = (s_s / s_t) * torch.exp(-h) * x + a_s * one_m * x0
        if p == 2:
            d1 = (x0 - x0_prev) / (h_prev / h)
            w = 0.5 * one_m if solver_type == "midpoint" else one_m / (-2.0 * h) + 1.0
            x = x + a_s * w * d1
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = x + s_s * torch.sqrt(one_m) * z
        x0_prev, h_prev = x0, h
    return x
