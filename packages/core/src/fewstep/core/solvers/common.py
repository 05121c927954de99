"""What every solver shares: the bound model signature and schedule coefficients at one time."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

Model = Callable[[Tensor, Tensor], Tensor]  # (x, t) -> x0, with conditioning/guidance bound


def coeffs(model, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha_t, sigma_t, lambda_t) as float64 scalars from the model's schedule."""
    sched = model.schedule
    return sched.alpha(t), sched.sigma(t), sched.lambda_(t)
