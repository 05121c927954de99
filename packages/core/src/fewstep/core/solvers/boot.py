"""The BOOT student's sampling rule (Gu et al. 2023): one evaluation of g(eps, t)."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Model, coeffs, is_zero


@torch.no_grad()
def sample_boot(model: Model, x: Tensor, ts: Tensor) -> Tensor:
    """A BOOT student g(eps, t) predicts the signal y_t = (x_t - sigma_t eps) / alpha_t of its
    teacher's trajectory from the noise alone, so sampling is one NFE whatever the grid.

    ``x`` is the scaled noise sigma(ts[0]) eps (the student was trained from t_max, so the grid
    should start there). A grid ending at 0 returns y at t_min (the sample); a grid ending at
    t > 0 returns the trajectory state there, x_t = alpha_t y_t + sigma_t eps, as other solvers
    return the state at their last time. Intermediate grid times are not used.
    """
    t0, t_end = ts[0], ts[-1]
    if is_zero(t_end):
        t = torch.as_tensor(model.schedule.t_min, dtype=torch.float64, device=x.device)
        return model(x, t)
    y = model(x, t_end)
    a, s, _ = coeffs(model, t_end)
    eps = x / model.schedule.sigma(t0).to(x.dtype)
    return a.to(x.dtype) * y + s.to(x.dtype) * eps
