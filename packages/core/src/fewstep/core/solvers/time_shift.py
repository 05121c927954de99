"""Time-Shift Sampler (Li et al. 2024, "Alleviating Exposure Bias in Diffusion Models through Sampling with Shifted
Time Steps", ICLR'24; reference code Mingxiao-Li/TS-DPM).

Exposure bias: after a few coarse steps, the sample x_t no longer has the noise level its scheduled t says. TS-DPM
re-couples them: in the early, high-noise part of sampling (before the cutoff time t_c), the state reached at the
scheduled time t is handed to the model at the time t_s, within a window around t, whose marginal variance best
matches the sample's variance,

    t_s = argmin_{tau in [t - w/2, t + w/2]} | Var(x_t) - (alpha_tau^2 v_data + sigma_tau^2) |,

and the next step runs from t_s to the next scheduled time. With ``data_var = 0`` the target is sigma_tau^2 = 1 - abar_tau
for VP schedules, the rule of the reference code; a positive ``data_var`` (the data's per-sample variance) makes t
itself the best match for samples that have the right marginal, on any schedule. Adaptations, so that the wrapper works for every schedule and solver:
the window ``w`` is measured in lambda = log(alpha/sigma) (TS-DPM's 30 of 1000 DDPM steps is about 0.2 there), the
cutoff is an EDM noise level sigma/alpha (TS-DPM's t_c = 300 of 1000 is about 1.2), and Var(x_t) is pooled over the
batch (TS-DPM shifts each sample; a batch-wide t_s keeps the one-time-per-call contract and bound conditioning).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .common import Model
from .edm import sigma_bar

Solver = Callable[..., Tensor]


def sample_variance(x: Tensor) -> Tensor:
    """Per-sample variance over all non-batch elements, averaged over the batch (TS-DPM's Var(x_t), pooled)."""
    return x.flatten(1).to(torch.float64).var(dim=1).mean()


def shifted_time(
    schedule, x: Tensor, t: Tensor, t_next: Tensor, window: float, data_var: float = 0.0, num: int = 33
) -> Tensor:
    """Li et al. 2024: the time within ``window`` (in lambda) around t whose variance best matches Var(x).

    Candidates stay strictly noisier than ``t_next`` and inside the schedule, so the grid stays descending.
    """
    lam = schedule.lambda_(t)
    lo = max(float(lam) - window / 2, float(schedule.lambda_(torch.tensor(schedule.t_max, dtype=torch.float64))))
    lam_next = math.inf if float(t_next) == 0.0 else float(schedule.lambda_(t_next))
    hi = min(float(lam) + window / 2, lam_next - 1e-6)
    if hi <= lo:
        return t
    taus = schedule.inverse_lambda(torch.linspace(lo, hi, num, dtype=torch.float64, device=t.device))
    taus = torch.cat([taus, t.reshape(1)])  # t itself is always a candidate (ties keep the schedule)
    target = schedule.alpha(taus) ** 2 * data_var + schedule.sigma(taus) ** 2
    return taus[torch.argmin((sample_variance(x) - target).abs())]


def time_shift(
    solver_fn: Solver, window: float = 0.2, cutoff: float = 1.0, data_var: float = 0.0, num: int = 33
) -> Solver:
    """Wrap any solver with the Time-Shift Sampler (Li et al. 2024); the result has the solver contract.

    Steps whose scheduled noise level sigma/alpha exceeds ``cutoff`` run one at a time from the shifted time t_s
    (the first step, from pure noise, is never shifted); the rest of the grid runs in one call, so a multistep
    solver keeps its history there (inside the shifted part it restarts at every step, as at a grid's start).
    """

    @torch.no_grad()
    def sample_time_shift(model: Model, x: Tensor, ts: Tensor, **opts) -> Tensor:
        sched = model.schedule
        n, i, t = len(ts) - 1, 0, ts[0]
        while i < n and (i == 0 or float(sigma_bar(sched, ts[i])) > cutoff):
            if i > 0:
                t = shifted_time(sched, x, ts[i], ts[i + 1], window, data_var, num)
            x = solver_fn(model, x, torch.stack([t, ts[i + 1]]), **opts)
            i += 1
            t = ts[i]
        if i < n:
            x = solver_fn(model, x, ts[i:], **opts)
        return x

    sample_time_shift.__name__ = f"time_shift_{getattr(solver_fn, '__name__', 'solver')}"
    sample_time_shift.__doc__ = f"Time-Shift Sampler (Li et al. 2024) around {sample_time_shift.__name__[11:]}."
    return sample_time_shift
