"""Tuned few-step sampling from "Hyperparameters are all you need" (Li 2025, arXiv:2510.02390; reference code
TheLovesOfLadyPurple/Hyperparameters-are-all-you-need, the Stable Diffusion 1.5 scripts).

The paper's training-free 4-8 step recipe is a time grid (``grids.tuned_grid``) plus a solver choice:
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

from .common import Model, coeffs
from .first_order import sample_ddim
from .multistep import sample_dpmpp_2m, sample_dpmpp_2m_sde


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
