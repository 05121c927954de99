"""UniPC (Zhao et al. 2023): unified predictor (UniP) and corrector (UniC), data prediction, B(h) variants.

Each step costs one NFE. At step i the model is evaluated at the predicted x_i; UniC-p uses that
evaluation to correct x_i (a free extra order: UniC-p after a p-th order step is of order p + 1,
Zhao et al. 2023), then UniP-p predicts x_{i+1} from the corrected x_i with the stored
x0 predictions. The final x_N is never corrected (that would cost an extra NFE), as in the
reference code and diffusers' ``UniPCMultistepScheduler``.

Notation: a step goes t_i -> t_{i+1} (here ``t`` -> ``s``), h = lambda_s - lambda_t,
hh = -h (data prediction), r_k = (lambda_{i-k} - lambda_i) / h < 0, D_k = (x0_{i-k} - x0_i) / r_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .common import Model, coeffs, step_order

VARIANTS = ("bh1", "bh2")


def _B(hh: Tensor, variant: str) -> Tensor:
    """B(h) of UniPC (Zhao et al. 2023): B1(h) = h ("bh1"), B2(h) = e^h - 1 ("bh2"), in the signed step hh."""
    return hh if variant == "bh1" else torch.expm1(hh)


def _rhos(rs: list[Tensor], h: Tensor, variant: str) -> Tensor:
    """UniPC coefficients (Zhao et al. 2023): solve R a = g / B(h), R[j, k] = r_k^j, g_n = hh phi_{n+1}(hh) n!."""
    hh = -h
    B = _B(hh, variant)
    z_phi = torch.expm1(hh) / hh - 1  # hh phi_2(hh); phi_{k+1}(z) = (phi_k(z) - 1/k!) / z
    g = []
    for k in range(1, len(rs) + 1):
        g.append(z_phi * math.factorial(k) / B)
        z_phi = z_phi / hh - 1.0 / math.factorial(k + 1)
    R = torch.stack([torch.stack([r**j for r in rs]) for j in range(len(rs))])
    return torch.linalg.solve(R, torch.stack(g))


def _bh_step(x, m0, ds, rhos, ratio, a_s, h, variant):
    """x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) x0_t - alpha_s B(h) sum_k rho_k D_k."""
    x = ratio * x - a_s * torch.expm1(-h) * m0
    if ds:
        x = x - a_s * _B(-h, variant) * sum(r * d for r, d in zip(rhos, ds))
    return x


@torch.no_grad()
def sample_unipc(
    model: Model,
    x: Tensor,
    ts: Tensor,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    disable_corrector: Sequence[int] = (),
) -> Tensor:
    """UniPC-p (Zhao et al. 2023): UniP-p predictor + UniC-p corrector, data prediction, 1 NFE per step.

    ``order`` is p (1-3; diffusers' ``solver_order``, default 2). ``lower_order_final`` caps step i of
    n at order n - i for every n (diffusers' UniPC rule; DPM-Solver++ only does it below 15 steps).
    ``disable_corrector`` lists step indices whose result is not corrected (diffusers' option).
    UniP-2 and UniC-1 use rho = 1/2, the h -> 0 limit of their coefficient, as the reference code
    and diffusers do; the error this adds is of higher order.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; use one of {VARIANTS}")
    n = len(ts) - 1
    cs = [coeffs(model, t) for t in ts]  # (alpha, sigma, lambda) per grid time
    x0s: list[Tensor] = []  # x0 predictions at t_0..t_i (last `order` kept)
    ls: list[Tensor] = []  # their lambdas
    x_prev, p_prev = None, 0
    for i in range(n):
        a_t, s_t, l_t = cs[i]
        m = model(x, ts[i])
        if x_prev is not None and (i - 1) not in disable_corrector:
            # UniC-p_prev: redo step i-1 from x_prev with the new x0 at t_i as an extra point (r = 1).
            h = l_t - ls[-1]
            rs = [(l - ls[-1]) / h for l in ls[-p_prev:-1][::-1]] + [torch.ones_like(h)]
            ds = [(mk - x0s[-1]) / r for mk, r in zip(x0s[-p_prev:-1][::-1] + [m], rs)]
            rhos = [0.5] if p_prev == 1 else _rhos(rs, h, variant)
            x = _bh_step(x_prev, x0s[-1], ds, rhos, s_t / cs[i - 1][1], a_t, h, variant)
        x0s.append(m)
        ls.append(l_t)
        del x0s[:-order], ls[:-order]
        # UniP-p: predict x_{i+1} from x_i and the last p x0 predictions.
        a_s, s_s, l_s = cs[i + 1]
        p = step_order(order, i, n, lower_order_final, ts[i + 1])
        h = l_s - l_t
        rs = [(l - l_t) / h for l in ls[-p:-1][::-1]]
        ds = [(mk - m) / r for mk, r in zip(x0s[-p:-1][::-1], rs)]
        rhos = [0.5] if p == 2 else (_rhos(rs, h, variant) if p > 2 else [])
        x_prev, p_prev = x, p
        x = _bh_step(x, m, ds, rhos, s_s / s_t, a_s, h, variant)
    return x
