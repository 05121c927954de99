"""Gaussian data x0 ~ N(0, S^2 I): the exact denoiser and the closed-form PF-ODE solution.

Shared by the solver tests: with this data every solver's error to the exact ODE solution can be
measured, so convergence orders and grid searches are checked against ground truth.
"""

import math

from torch import nn

S = 0.5  # data std


class GaussianX0(nn.Module):
    """Exact posterior mean E[x0 | x_t] = alpha S^2 / (alpha^2 S^2 + sigma^2) x_t, any input shape."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, net_time, cond=None):
        t = net_time.double() / 1000.0  # the schedules used here feed the net 1000 t
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        return (a * S**2 / (a**2 * S**2 + s**2)).view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * x


def exact(schedule, x_T, t_end=None):
    """PF-ODE solution at t_end (default t_min) from unit noise x_T scaled by sigma(t_max)."""
    t_end = schedule.t_min if t_end is None else t_end
    std = lambda t: math.sqrt(float(schedule.alpha(t)) ** 2 * S**2 + float(schedule.sigma(t)) ** 2)  # noqa: E731
    return x_T * float(schedule.sigma(schedule.t_max)) * std(t_end) / std(schedule.t_max)
