"""ArcFlow's sampler: a mixture of momentum processes per step, integrated in closed form.

ArcFlow (Yang et al. 2026, arXiv:2602.09014; code pnotp/ArcFlow, built on pi-Flow's policies) works
in rectified-flow (RF) coordinates, x_s = (1 - s) x0 + s eps with dx/ds = v. At the start s_src of
each step the network, called once, returns a *policy* for the whole step: per pixel, K velocities
u_k, mixture logits l_k and rates g_k (g_0 = 0: one component always moves in a straight line), and

    v(s) = sum_k w_k u_k exp(g_k (s_src - s)),        w = softmax(l),

a mixture of momentum processes whose speed grows (g > 0) or decays (g < 0) along the step. It has a
closed-form integral, so a step from s_a to s_b < s_a costs no further evaluations and no
discretisation error:

    x(s_b) = x(s_a) - sum_k w_k u_k exp(g_k (s_src - s_a)) (s_a - s_b) phi(g_k (s_a - s_b)),
    phi(y) = (e^y - 1) / y   (phi(0) = 1).

Any Gaussian schedule maps to RF coordinates by s = sigma / (alpha + sigma), x_rf = x / (alpha +
sigma), so a student keeps its teacher's schedule and parametrisation: the K "means" of its wide
output are predictions in that parametrisation, each converted to an RF velocity eps_k - x0_k at the
step's source point (with each x0_k clipped to the student's clip_x0, as the Denoiser clips its x0).
Wide output layout (channels): K*C means, then K logits, then K-1 rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from itertools import pairwise

import torch
from torch import Tensor

from ..updates import _bcast, to_x0_eps

if TYPE_CHECKING:
    from ..denoiser import Denoiser
from .common import is_zero

RATE_LIMIT = 10.0  # |g| cap: exp(10) over a unit step is already far outside anything a teacher does


# -- RF coordinates of any schedule ---------------------------------------------------------------
def rf_time(schedule, t: Tensor) -> Tensor:
    """s = sigma / (alpha + sigma): the RF time with the schedule's signal-to-noise ratio (0 at t = 0)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    safe = torch.where(t == 0, torch.full_like(t, schedule.t_min), t)
    a, s = schedule.alpha(safe), schedule.sigma(safe)
    return torch.where(t == 0, torch.zeros_like(t), s / (a + s))


def rf_scale(schedule, t: Tensor) -> Tensor:
    """alpha(t) + sigma(t), so that x_t = (alpha + sigma) x_rf (1 at t = 0)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    safe = torch.where(t == 0, torch.full_like(t, schedule.t_min), t)
    return torch.where(t == 0, torch.ones_like(t), schedule.alpha(safe) + schedule.sigma(safe))


def schedule_time(schedule, s: Tensor) -> Tensor:
    """The schedule time with the SNR of RF time s (inverse of :func:`rf_time`), clamped to
    [t_min, t_max]; s itself for a RectifiedFlow schedule."""
    s = torch.as_tensor(s, dtype=torch.float64)
    lam = torch.log1p(-s) - torch.log(s)  # lambda = log(alpha / sigma) = log((1 - s) / s)
    return schedule.inverse_lambda(lam).clamp(schedule.t_min, schedule.t_max)


# -- the momentum-mixture policy ------------------------------------------------------------------
def wide_channels(components: int, channels: int) -> int:
    """Output channels of an ArcFlow net: K velocities of C channels, K logits, K-1 rates."""
    return components * channels + 2 * components - 1


def components_of(out_channels: int, channels: int) -> int:
    k, r = divmod(out_channels + 1, channels + 2)
    if r or k < 1:
        raise ValueError(
            f"an ArcFlow net outputs K*C + 2K - 1 channels (C={channels}); got {out_channels}, "
            f"which fits no K (a plain net outputs C = {channels})"
        )
    return k


def _phi(y: Tensor) -> Tensor:
    """(e^y - 1) / y, stable near 0 (series 1 + y/2 + y^2/6)."""
    small = y.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(y), y)
    return torch.where(small, 1 + y / 2 + y * y / 6, torch.expm1(safe) / safe)


@dataclass
class MomentumPolicy:
    """v(s) = sum_k w_k u_k exp(g_k (s_src - s)) for one step; u (B, K, C, ...), logits and rates
    (B, K, 1, ...) with rates[:, 0] = 0, s_src (B,)."""

    u: Tensor
    logits: Tensor
    rates: Tensor
    s_src: Tensor

    def _b(self, s: Tensor) -> Tensor:  # (B,) -> (B, 1, 1, ...) against u
        return _bcast(torch.as_tensor(s, dtype=torch.float64, device=self.u.device), self.u)

    def velocity(self, s: Tensor) -> Tensor:
        """v(s), (B, C, ...)."""
        w = self.logits.softmax(1)
        return (w * self.u * torch.exp(self.rates * self._b(self.s_src - s))).sum(1)

    def displacement(self, s_a: Tensor, s_b: Tensor) -> Tensor:
        """x(s_a) - x(s_b) = int_{s_b}^{s_a} v(s) ds, in closed form (module docstring)."""
        d = self._b(s_a - s_b)
        w = self.logits.softmax(1)
        return (w * self.u * torch.exp(self.rates * self._b(self.s_src - s_a)) * d * _phi(self.rates * d)).sum(1)

    def integrate(self, x: Tensor, s_a: Tensor, s_b: Tensor) -> Tensor:
        """x(s_b) from x(s_a): the exact solution of dx/ds = v(s)."""
        return x - self.displacement(s_a, s_b).to(x.dtype)

    def mean_velocity(self, s_a: Tensor, s_b: Tensor) -> Tensor:
        """Average velocity over [s_b, s_a] (displacement / (s_a - s_b)); v(s_a) where s_a = s_b."""
        d = self._b(s_a - s_b)
        w = self.logits.softmax(1)
        return (w * self.u * torch.exp(self.rates * self._b(self.s_src - s_a)) * _phi(self.rates * d)).sum(1)

    def detach(self) -> MomentumPolicy:
        return MomentumPolicy(self.u.detach(), self.logits.detach(), self.rates.detach(), self.s_src)

    def drop_components(self, p: float, generator: torch.Generator) -> MomentumPolicy:
        """Drop each component with probability p (never all of them): the released code's gm_dropout."""
        if p <= 0:
            return self
        b, k = self.logits.shape[:2]
        drop = torch.rand(b, k, generator=generator) < p
        drop &= ~drop.all(1, keepdim=True)
        drop = drop.to(self.logits.device).reshape(b, k, *([1] * (self.logits.ndim - 2)))
        return MomentumPolicy(self.u, self.logits.masked_fill(drop, float("-inf")), self.rates, self.s_src)


def split_output(out: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Wide net output (B, K*C + 2K - 1, ...) -> means (B, K, C, ...), logits (B, K, 1, ...),
    rates (B, K, 1, ...) with the first rate 0."""
    k = components_of(out.shape[1], channels)
    b, rest = out.shape[0], out.shape[2:]
    means = out[:, : k * channels].reshape(b, k, channels, *rest)
    logits = out[:, k * channels : k * channels + k].reshape(b, k, 1, *rest)
    rates = out[:, k * channels + k :].reshape(b, k - 1, 1, *rest).clamp(-RATE_LIMIT, RATE_LIMIT)
    rates = torch.cat([torch.zeros_like(logits[:, :1]), rates], 1)
    return means, logits, rates


def wide_output(den: "Denoiser", x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    """The net's raw wide output at (x, t) (one NFE)."""
    den.nfe += 1
    return den.net_output(x, torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0]), cond)


def policy_at(den: "Denoiser", x_rf: Tensor, t: Tensor, cond: Tensor | None) -> MomentumPolicy:
    """The policy the ArcFlow student ``den`` gives at RF state x_rf, schedule time t (B,) > 0."""
    sched = den.schedule
    t = torch.as_tensor(t, dtype=torch.float64, device=x_rf.device).expand(x_rf.shape[0])
    x = x_rf * _bcast(rf_scale(sched, t), x_rf)  # (B, C, ...) in the schedule's coordinates
    means, logits, rates = split_output(wide_output(den, x, t, cond), x.shape[1])
    xk, alpha, sigma = x.unsqueeze(1), sched.alpha(t), sched.sigma(t)  # (B, 1, C, ...) against (B, K, C, ...)
    x0, eps = to_x0_eps(means, den.prediction, xk, alpha, sigma)
    if den.clip_x0 is not None:
        # Static thresholding of every component's x0, as the Denoiser does at sampling (and the
        # teacher did on its trajectories): an eps prediction at high noise turns small errors
        # into huge x0 errors (x0 = (x - sigma eps) / alpha). Applied in training too: the policy
        # is the sampling rule.
        x0 = x0.clamp(-den.clip_x0, den.clip_x0)
        eps = (xk - _bcast(alpha, xk) * x0) / _bcast(sigma, xk)
    return MomentumPolicy(eps - x0, logits, rates, rf_time(sched, t))


@torch.no_grad()
def sample_arcflow(model, x: Tensor, ts: Tensor, components: int | None = None, **_) -> Tensor:
    """ArcFlow sampling (Yang et al. 2026): one policy per interval of ``ts``, integrated exactly.

    ``model`` is the bound student (``fewstep.core.solvers.Bound``); its net is called once per
    interval for the wide output. Ends in the schedule's coordinates at ts[-1] (x0 at t = 0,
    clipped to the student's clip_x0 as the other samplers' final x0 is).
    """
    den, cond, guidance = (getattr(model, k, None) for k in ("denoiser", "cond", "guidance"))
    if den is None or not hasattr(den, "net_output"):
        raise TypeError("sample_arcflow needs the bound student (fewstep.core.solvers.Bound), not a bare x0 function")
    if guidance not in (None, 1, 1.0):
        raise ValueError("an ArcFlow student samples without CFG; distil guidance in (DistillConfig.teacher_guidance)")
    sched = den.schedule
    x_rf = x / rf_scale(sched, ts[0]).to(x.dtype)
    for t, t_next in pairwise(ts):
        policy = policy_at(den, x_rf, t, cond)
        if components is not None and policy.u.shape[1] != components:
            raise ValueError(f"the net outputs {policy.u.shape[1]} components, the sampler rule says {components}")
        x_rf = policy.integrate(x_rf, policy.s_src, rf_time(sched, t_next).expand(x.shape[0]))
    if is_zero(ts[-1]):
        return x_rf.clamp(-den.clip_x0, den.clip_x0) if den.clip_x0 is not None else x_rf
    return x_rf * rf_scale(sched, ts[-1]).to(x.dtype)


__all__ = [
    "MomentumPolicy",
    "components_of",
    "policy_at",
    "rf_scale",
    "rf_time",
    "sample_arcflow",
    "schedule_time",
    "split_output",
    "wide_channels",
    "wide_output",
]
