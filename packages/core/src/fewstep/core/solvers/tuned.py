"""Tuned few-step sampling from "Hyperparameters are all you need" (Li 2025, arXiv:2510.02390; reference code
TheLovesOfLadyPurple/Hyperparameters-are-all-you-need, the Stable Diffusion 1.5 scripts).

The paper's training-free 4-8 step recipe is a time grid plus a solver choice:
1. Truncation: sampling stops early, at t_stop, the point ``stop`` of a Karras grid with ``K`` points and exponent
   ``rho`` on the EDM noise level (4 steps: K=8, rho=5, stop=5; 5-6 steps: K=8, rho=5, stop=6; 7 steps: K=12, rho=10,
   stop=7; 8 steps: K=12, rho=7, stop=9, the "full trick"). The sample is returned there, in EDM scale (x/alpha), still
   carrying noise sigma_bar(t_stop) (about 0.13-0.2): the reference decodes it as is.
2. Spacing: the ``steps + 1`` times between t_max and t_stop follow Karras' formula with rho_t = 1.2 in the
   network's time (the DDPM timestep index), i.e. nearly uniform in t, slightly denser near t_stop.
3. Solver: DPM-Solver++(1) (= DDIM) up to 6 steps, DPM-Solver++(2M) (no lower-order final step) from 7.
The reference's SDE sampler (DPM-Solver++ SDE for a final stage) is wired in its scripts but never reached with the
published settings; FreeU re-weighting of UNet skips is a network change, outside a solver.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schedules import Schedule
from .common import Model, coeffs
from .edm import time_at
from .first_order import sample_ddim
from .grids import karras
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde


def tuned_hyperparameters(steps: int) -> tuple[int, float, int]:
    """(K, rho, stop) of the truncation point per step count, from the reference SD 1.5 scripts."""
    if steps < 1:
        raise ValueError(f"steps={steps}: sampling needs at least 1 step")
    if steps <= 4:
        return 8, 5.0, 5
    if steps <= 6:
        return 8, 5.0, 6
    if steps == 7:
        return 12, 10.0, 7
    if steps == 8:
        return 12, 7.0, 9
    return steps + 4, 7.0, steps + 1  # beyond the paper: the 8-step rule, extended


def _inverse_net_time(schedule: Schedule, n: Tensor) -> Tensor:
    """Times t with net_time(t) = n, by bisection (net_time increases in t for every schedule)."""
    lo = torch.full_like(n, schedule.t_min, dtype=torch.float64)
    hi = torch.full_like(n, schedule.t_max, dtype=torch.float64)
    for _ in range(80):
        mid = (lo + hi) / 2
        up = schedule.net_time(mid) < n
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return (lo + hi) / 2


def tuned_grid(
    schedule: Schedule,
    steps: int,
    K: int | None = None,
    rho: float | None = None,
    stop: int | None = None,
    rho_t: float = 1.2,
    sigma_stop: float | None = None,
) -> Tensor:
    """Li 2025: ``steps`` intervals from t_max to the truncation time t_stop, Karras-spaced (rho_t) in network time.

    ``sigma_stop`` sets the truncation noise level sigma/alpha directly; use it where the schedule's sigma/alpha range
    is far from Stable Diffusion's (0.03-14.6), e.g. rectified flow with t_max near 1, where the Karras rule stops
    too early.
    """
    K0, rho0, stop0 = tuned_hyperparameters(steps)
    K, rho, stop = K or K0, rho or rho0, stop if stop is not None else stop0
    if not 0 < stop < K:
        raise ValueError(f"stop={stop} must index one of the K={K} Karras points after the first")
    if sigma_stop is not None:
        t_stop = time_at(schedule, torch.tensor(sigma_stop, dtype=torch.float64))
    else:
        t_stop = karras(schedule, K - 1, rho)[stop]  # K points from t_max to t_min, as the reference's Karras(K)
    t_max = torch.tensor(schedule.t_max, dtype=torch.float64)
    n_hi, n_lo = float(schedule.net_time(t_max)), max(float(schedule.net_time(t_stop)), 1e-6)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    n = (n_hi ** (1 / rho_t) + u * (n_lo ** (1 / rho_t) - n_hi ** (1 / rho_t))) ** rho_t
    t = _inverse_net_time(schedule, n)
    t[0], t[-1] = schedule.t_max, t_stop
    return t


@torch.no_grad()
def sample_tuned(
    model: Model, x: Tensor, ts: Tensor, order: int | None = None, denoise_to_zero: bool = False
) -> Tensor:
    """Li 2025: DPM-Solver++(1) up to 6 steps, (2M) beyond, returning x/alpha at the truncation time (EDM scale).

    ``denoise_to_zero`` spends one more evaluation to return the x0 prediction at t_stop instead (DPM-Solver's name).
    """
    order = order or (1 if len(ts) - 1 <= 6 else 2)
    if order == 1:
        x = sample_ddim(model, x, ts)
    elif order == 2:
        x = sample_dpmpp_2m(model, x, ts, lower_order_final=False)
    else:
        raise ValueError(f"order={order}: the paper's solvers are DPM-Solver++ of order 1 or 2")
    if denoise_to_zero:
        return model(x, ts[-1])
    return x / coeffs(model, ts[-1])[0]


@torch.no_grad()
def sample_tuned_sde(
    model: Model, x: Tensor, ts: Tensor, denoise_to_zero: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Li 2025's tuned grid driven by SDE-DPM-Solver++(2M): the stochastic variant of the recipe.

    The same truncated, rho_t-spaced grid as :func:`sample_tuned`, integrated with the SDE solver
    (no lower-order final step, as the ODE recipe), returning x/alpha at t_stop or, with
    ``denoise_to_zero``, the x0 prediction there.
    """
    x = sample_dpmpp_2m_sde(model, x, ts, lower_order_final=False, generator=generator)
    if denoise_to_zero:
        return model(x, ts[-1])
    return x / coeffs(model, ts[-1])[0]


SOLVERS = {"tuned": sample_tuned, "tuned_sde": sample_tuned_sde}
GRIDS = {"tuned": tuned_grid}  # register next to grids.make_grid's builders
