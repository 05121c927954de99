"""Denoising MCMC (Kim & Ye 2022, "Denoising MCMC for Accelerating Diffusion-Based Generative Models"; reference
code 1202kbs/DMCMC): MCMC in the product space of data and noise level, then an ODE/SDE integrator from there.

DMCMC's instance Denoising Langevin Gibbs (DLG) alternates, in EDM variables (x_bar = x/alpha, sigma_bar = sigma/alpha),
    x_bar | sigma_bar:  a Langevin step on p_sigma_bar, score = (D(x_bar; sigma_bar) - x_bar) / sigma_bar^2
    sigma_bar | x_bar:  the noise level of the current x_bar
Chains that stay close to the data manifold at a low-ish noise level need only a short integration to give clean
samples; the reference keeps persistent chains and draws a batch every few MCMC steps, so the chains' start-up is
paid once (:func:`dmcmc_chain`). :func:`sample_dmcmc` is the one-call form with the solver contract.

sigma | x: the reference uses a trained noise-level classifier (argmax, per sample). Training-free, this file offers
(``gibbs_sigma=True``, one more evaluation per sweep) the denoiser's own consistency, pooled over the batch: for
x_bar = x0 + sigma_bar eps, E||x_bar - D||^2 = sigma_bar^2 E[d - tr dD/dx_bar] (Tweedie's second-order identity,
Cov[x0 | x_bar] = sigma_bar^2 dD/dx_bar), with Hutchinson's trace by a finite difference. It is consistent for samples of
p_sigma_bar, but it is off by default: it overshoots for samples left between modes by coarse steps, and in long
chains it follows the (unadjusted) Langevin step's variance inflation upwards. A batch-wide sigma_bar keeps the
one-time-per-call solver contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .common import Model
from .edm import noise, sigma_bar, time_at
from .multistep import sample_dpmpp_2m

Solver = Callable[..., Tensor]


def estimate_sigma(model: Model, xb: Tensor, t: Tensor, D: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Batch noise level sigma_bar^2 = sum||x_bar - D||^2 / sum(d - tr dD/dx_bar) (Tweedie, 2nd order); 1 NFE."""
    sched = model.schedule
    sb = sigma_bar(sched, t)
    v = torch.where(noise(xb, generator) > 0, 1.0, -1.0).to(xb.dtype)  # Rademacher probe, (B, ...)
    delta = 1e-3 * sb
    jvp = (model((xb + delta * v) * sched.alpha(t), t) - D) / delta  # dD/dx_bar v, finite difference
    d = xb[0].numel()
    trace = (v * jvp).flatten(1).sum(1).to(torch.float64)  # (B,)
    resid = (xb - D).flatten(1).to(torch.float64).pow(2).sum(1)  # (B,)
    dof = (d - trace).sum().clamp(min=1e-3 * d * len(xb))  # d - tr dD/dx in (0, d] for a true posterior mean
    return torch.sqrt(resid.sum() / dof)


@torch.no_grad()
def denoising_langevin_gibbs(
    model: Model,
    xb: Tensor,
    sb: Tensor,
    n_mcmc: int,
    eta: float = 0.5,
    gibbs_sigma: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Kim & Ye 2022, DLG: n_mcmc sweeps of x_bar | sigma_bar (Langevin) and sigma_bar | x_bar; returns (x_bar, sigma_bar).

    Langevin step size eps = eta sigma_bar^2 / 2, so x_bar <- x_bar + eta/2 (D - x_bar) + sqrt(eta) sigma_bar z
    (unadjusted: its stationary variance along a direction of variance v is v / (1 - eps / 2v), so keep eta <= 1).
    """
    sched = model.schedule
    for _ in range(n_mcmc):
        t = time_at(sched, sb)
        sb = sigma_bar(sched, t)
        D = model(xb * sched.alpha(t), t)
        sb_next = estimate_sigma(model, xb, t, D, generator) if gibbs_sigma else sb  # sigma_bar | x_bar
        xb = xb + 0.5 * eta * (D - xb) + eta**0.5 * sb * noise(xb, generator)  # x_bar | sigma_bar: Langevin step.
        sb = sb_next
    return xb, sb


def _split(model: Model, ts: Tensor, sigma_mcmc: float) -> int:
    """Index c of the first grid time with sigma_bar <= sigma_mcmc, kept interior (the chains' level)."""
    ok = sigma_bar(model.schedule, ts) <= sigma_mcmc
    c = int(torch.nonzero(ok)[0]) if bool(ok.any()) else len(ts) - 2
    return min(max(c, 1), len(ts) - 2)


def _finish(model: Model, xb: Tensor, sb: Tensor, tail: Tensor, solver: Solver, **solver_opts) -> Tensor:
    """Integrate chains at noise level sb down the remaining grid times below it."""
    t = time_at(model.schedule, sb)
    tail = tail[tail < t]
    x = xb * model.schedule.alpha(t)
    return solver(model, x, torch.cat([t.reshape(1), tail]), **solver_opts) if len(tail) else x


@torch.no_grad()
def dmcmc_chain(
    model: Model,
    x: Tensor,
    ts: Tensor,
    solver: Solver = sample_dpmpp_2m,
    sigma_mcmc: float = 0.5,
    n_mcmc: int = 2,
    eta: float = 0.5,
    gibbs_sigma: bool = False,
    generator: torch.Generator | None = None,
    **solver_opts,
) -> Iterator[Tensor]:
    """Kim & Ye 2022 with persistent chains, as their sampling code: one batch of samples per round.

    The grid's head (t_max down to sigma_bar ~ sigma_mcmc) runs once to initialise the chains; every round then spends
    n_mcmc * (1 + gibbs_sigma) evaluations on DLG and integrates a copy of the chains down the grid's tail. Rounds are
    correlated through the chains (the price of the amortisation). Give a fine head and a coarse tail with an
    explicit grid, e.g. ``torch.cat([fine[:-1], coarse])``.
    """
    sched = model.schedule
    c = _split(model, ts, sigma_mcmc)
    x = solver(model, x, ts[: c + 1], **solver_opts)  # Head: initialise the chains near the MCMC level.
    xb, sb = x / sched.alpha(ts[c]), sigma_bar(sched, ts[c])
    while True:
        xb, sb = denoising_langevin_gibbs(model, xb, sb, n_mcmc, eta, gibbs_sigma, generator)
        yield _finish(model, xb, sb, ts[c + 1 :], solver, **solver_opts)  # Tail: integrate a copy.


@torch.no_grad()
def sample_dmcmc(
    model: Model,
    x: Tensor,
    ts: Tensor,
    solver: Solver = sample_dpmpp_2m,
    sigma_mcmc: float = 0.5,
    n_mcmc: int = 2,
    eta: float = 0.5,
    gibbs_sigma: bool = False,
    generator: torch.Generator | None = None,
    **solver_opts,
) -> Tensor:
    """DMCMC (Kim & Ye 2022) in one call: solver to sigma_bar ~ sigma_mcmc, n_mcmc DLG sweeps, solver to the end.

    NFE = the solver's on the grid + n_mcmc * (1 + gibbs_sigma). The chains start from the head's output here, so
    nothing is amortised: DLG then corrects within-mode statistics but cannot move samples between modes.
    """
    chain = dmcmc_chain(model, x, ts, solver, sigma_mcmc, n_mcmc, eta, gibbs_sigma, generator, **solver_opts)
    return next(chain)
