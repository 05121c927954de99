"""What every solver shares: the bound model signature, coefficients at one time, grid checks.

Ending at t = 0. A grid may end with the time 0, where alpha = 1, sigma = 0 and lambda = +inf
(clean data; diffusers' ``final_sigmas_type="zero"``). The last interval is then a denoising step
x <- x0(x, t_{N-1}): the limit of every exponential integrator's first-order step, which the
data-prediction formulas (DDIM, DPM-Solver++, UniPC) reach exactly since sigma_s / sigma_t = 0 and
exp(-h) = 0. Higher-order terms and intermediate times are undefined there, so solvers drop to
first order (one NFE) for that interval. The network is never called at t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor], Tensor]  # (x, t) -> x0, with conditioning/guidance bound

GRID_TOL = 1e-9  # relative slack on [t_min, t_max] for grids converted from other libraries


def is_zero(t: Tensor) -> bool:
    """Whether grid time t is the clean end t = 0."""
    return float(t) == 0.0


def coeffs(model, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha_t, sigma_t, lambda_t) as float64 scalars from the model's schedule; (1, 0, +inf) at t = 0."""
    if is_zero(t):  # exact, whatever the schedule extrapolates to below t_min
        one = torch.ones((), dtype=torch.float64, device=t.device)
        return one, torch.zeros_like(one), torch.full_like(one, math.inf)
    sched = model.schedule
    return sched.alpha(t), sched.sigma(t), sched.lambda_(t)


def check_grid(schedule, ts: Tensor) -> Tensor:
    """Validate a time grid: 1-D, >= 2 times, strictly descending, in [t_min, t_max] except a final 0."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"a time grid must be strictly descending, got {ts.tolist()}")
    body = ts[:-1] if is_zero(ts[-1]) else ts
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    slack = GRID_TOL * max(hi, 1.0)
    if float(body.min()) < lo - slack or float(body.max()) > hi + slack:
        raise ValueError(
            f"grid times must lie in the schedule's [t_min, t_max] = [{lo:g}, {hi:g}] (a final 0 is allowed), "
            f"got [{float(body.min()):g}, {float(body.max()):g}]; for diffusers timesteps use "
            f"schedule.timestep_to_t(timesteps)"
        )
    return ts


def step_order(order: int, i: int, n: int, lower_final: bool, s: Tensor) -> int:
    """Order of step i of n for a multistep method: warm-up min(order, i+1), lower at the end, 1 into t = 0."""
    if is_zero(s):
        return 1
    p = min(order, i + 1)
    return min(p, n - i) if lower_final else p
