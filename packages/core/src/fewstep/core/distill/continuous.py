"""Continuous-time consistency distillation: sCM, rCM and TBCM, on one TrigFlow tangent.

TrigFlow (Lu & Song 2024, "Simplifying, stabilizing and scaling continuous-time consistency models",
Sec. 2): x_tau = cos(tau) x0 + sin(tau) z with tau in [0, pi/2], PF-ODE dx/dtau = F(x, tau), and the
consistency function f(x, tau) = cos(tau) x - sin(tau) F(x, tau). Any schedule x_t = alpha x0 + sigma
eps is TrigFlow after rescaling: with c = sqrt(alpha^2 + sigma^2) (1 for VP schedules),

    tau = arctan(sigma / alpha),   y = x_t / c = cos(tau) x0 + sin(tau) eps,   F = v / c,

where v = alpha eps - sigma x0 is the v-prediction (sigma_d = 1: the schedule's unit-variance noise).
Then f = cos(tau) y - sin(tau) F = x0 exactly, so the student stays a plain Denoiser (its x0 *is* the
consistency function) and samples with ``sample_consistency``. The time map back is
t = inverse_lambda(log cot tau) (lambda = log alpha/sigma). The boundary f(y, 0) = y comes free with
eps-, v- and flow-prediction nets; x0-prediction nets get a skip/out boundary (``SCM.student_spec``).

What the three objectives share (written once below):
- ``scm_tangent``: g = -cos^2(tau) (F^- - dy/dtau) - r cos(tau) sin(tau) (y + dF^-/dtau) (sCM
  Algorithm 1, with the "JVP rearrangement" of Sec. 5.1: one ``torch.func.jvp`` of the student with
  tangents (cos sin dy/dtau, cos sin), dy/dtau = F_teacher). At r = 1, g = cos(tau) df^-/dtau along
  the teacher's ODE; r ramps 0 -> 1 (tangent warmup, Sec. 4.1). By default the partial dF/dtau is a
  central difference over +-h (NVlabs/rcm's "semi-continuous" mode): fewstep nets embed the time on a
  0..1000 scale with sinusoids, and their exact dF/dtau wiggles with a period of ~0.006 in tau, which
  made the full-JVP target noisy on the digits teacher (see ``SCM.time_step``);
- ``normalise_tangent``: g / (||g|| + c), c = 0.1 (tangent normalisation, Sec. 4.1);
- ``AdaptiveWeight``: the learned log-variance w_phi(tau) of the adaptive weighting, loss
  e^w / D ||F_theta - F_theta^- - g||^2 - w (Sec. 4.2);
- the loss ||F_theta - sg(F_theta) - g||^2, whose gradient is -2 g . dF_theta/dtheta (theta^- =
  sg(theta): sCM needs no EMA target).

Memory and time: the JVP runs under ``no_grad`` (the tangent is a stop-gradient target), so it keeps
no activations for backward; its transient cost is about two forwards. A step saves for backward what
one ordinary denoising step saves (digits UNet, batch 64: 88 MB both), so no gradient checkpointing
is needed. A step costs about 3x a denoising step (digits UNet, CPU, batch 32: 0.34 s vs 0.10 s).
On CPU, forward-mode AD of tensor-scalar arithmetic runs through Python decompositions (~1 ms per
op; the first use imports torch._dynamo), which dominates for tiny nets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..card import Boundary, SamplerRule
from ..denoiser import Denoiser, _bcast
from ..parts import STUDENT, Part
from ..schedules import Schedule
from .base import Batch, DistillModule, Objective, StudentSpec, randn
from .critic import dmd_direction, dmd_loss, fake_score_loss, make_fake_score


# -- TrigFlow time maps ---------------------------------------------------------------------------
def tau_of_t(schedule: Schedule, t: Tensor) -> Tensor:
    """TrigFlow time tau = arctan(sigma / alpha) of schedule time t (float64)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.atan2(schedule.sigma(t), schedule.alpha(t))


def t_of_tau(schedule: Schedule, tau: Tensor) -> Tensor:
    """Schedule time of TrigFlow time tau: lambda = log(alpha/sigma) = log cot(tau)."""
    return schedule.inverse_lambda(torch.log(torch.cos(tau) / torch.sin(tau)))


def trig_scale(schedule: Schedule, t: Tensor) -> Tensor:
    """c = sqrt(alpha^2 + sigma^2): x_t = c * y with y the TrigFlow state (c = 1 for VP schedules)."""
    return torch.sqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)


def tau_range(schedule: Schedule) -> tuple[float, float]:
    return float(tau_of_t(schedule, schedule.t_min)), float(tau_of_t(schedule, schedule.t_max))


def lognormal_times(
    schedule: Schedule, n: int, p_mean: float, p_std: float, generator: torch.Generator, device=None
) -> tuple[Tensor, Tensor]:
    """(t, tau) with the EDM-sigma sigma/alpha = tan(tau) = exp(N(p_mean, p_std^2)) (sCM's proposal,
    Sec. 4.2; NVlabs/rcm's ``LogNormal`` p_G / p_D), clamped to the schedule's [t_min, t_max]."""
    log_sigma = p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64)
    t = t_of_tau(schedule, torch.atan(torch.exp(log_sigma))).clamp(schedule.t_min, schedule.t_max)
    return t.to(device), tau_of_t(schedule, t).to(device)


def trig_grid(schedule: Schedule, steps: int, mid_times: tuple[float, ...], sigma_data: float) -> list[float]:
    """Consistency sampling grid [t_max, mids..., 0] in schedule time. ``mid_times`` are intermediate
    TrigFlow times in the paper's convention (noise std ``sigma_data``: EDM sigma = sigma_data tan t);
    more steps than given mids fall back to a grid uniform in tau."""
    lo, hi = tau_range(schedule)
    if steps - 1 <= len(mid_times):
        taus = [math.atan(sigma_data * math.tan(m)) for m in mid_times[: steps - 1]]
    else:
        taus = [hi * (steps - k) / steps for k in range(1, steps)]
    taus = [min(max(tau, lo), hi) for tau in taus]
    ts = [float(schedule.t_max)] + [
        float(t_of_tau(schedule, torch.tensor(tau, dtype=torch.float64)).clamp(schedule.t_min, schedule.t_max))
        for tau in taus
    ]
    if any(b >= a for a, b in pairwise(ts)):
        raise ValueError(f"mid_times {mid_times} give a grid that is not strictly descending: {ts}")
    return ts + [0.0]


# -- the TrigFlow velocity and the sCM tangent ------------------------------------------------------
def trig_F(den: Denoiser, y: Tensor, tau: Tensor, cond: Tensor | None, guidance: float | None = None) -> Tensor:
    """F(y, tau): the TrigFlow velocity of any Denoiser (f = cos y - sin F = its x0)."""
    return velocity_at(den, y, t_of_tau(den.schedule, tau), cond, guidance)


def velocity_at(den: Denoiser, y: Tensor, t: Tensor, cond: Tensor | None, guidance: float | None = None) -> Tensor:
    """F = v(c y, t) / c at schedule time t of the TrigFlow state y (c = 1 for VP schedules)."""
    if den.schedule.is_variance_preserving:
        return den(y, t, cond, guidance, kind="v")
    c = _bcast(trig_scale(den.schedule, t), y)
    return den(y * c, t, cond, guidance, kind="v") / c


def time_rate(schedule: Schedule, tau: Tensor) -> tuple[Tensor, Tensor]:
    """(t, dt/dtau) at TrigFlow times tau, the derivative by reverse-mode autograd of the (B,) map.
    The JVP then runs in schedule time with the time tangent dt = dt/dtau dtau, so the schedule's
    inverse map is not carried through (slow, on CPU) forward-mode AD."""
    with torch.enable_grad():
        tau_ = tau.detach().to(torch.float64).requires_grad_(True)
        t = t_of_tau(schedule, tau_)
        (rate,) = torch.autograd.grad(t.sum(), tau_)
    return t.detach(), rate


def tangent_ratio(progress: float, warmup: float) -> float:
    """r of the tangent warmup: linear 0 -> 1 over the first ``warmup`` fraction of training (Sec. 4.1)."""
    return 1.0 if warmup <= 0 else min(1.0, progress / warmup)


def scm_tangent(
    student: Denoiser,
    y: Tensor,
    tau: Tensor,
    cond: Tensor | None,
    dy: Tensor,
    r: float = 1.0,
    time_step: float | None = None,
) -> Tensor:
    """The sCM target tangent g (sCM Algorithm 1), a stop-gradient (B, ...) tensor.

    g = -cos^2(tau) (F^- - dy/dtau) - r cos(tau) sin(tau) (y + dF^-/dtau), with dy/dtau = F_teacher
    and the total derivative dF^-/dtau = dF/dy . dy/dtau + dF/dtau along the teacher ODE from one
    forward-mode JVP; the tangent (cos sin dy, cos sin) already carries the factor cos sin (sCM
    Sec. 5.1, "JVP rearrangement"). At r = 1 this is cos(tau) df^-/dtau with f = cos y - sin F.

    ``time_step`` = h switches to NVlabs/rcm's "semi-continuous" mode (``fd_type=1``): the JVP in y
    only, and the partial dF/dtau by a central difference over [tau - h, tau + h] (clamped to the
    schedule's range), which averages out the fast wiggles a 0..1000 sinusoidal time embedding puts
    in dF/dtau (sCM Sec. 4.1 traces unstable time derivatives to the time embedding's scale; rCM adds
    this finite-difference mode for the same reason).
    """
    cos, sin = torch.cos(tau), torch.sin(tau)
    cs = cos * sin  # (B,) float64
    t, rate = time_rate(student.schedule, tau)

    def F_of(y_, t_):
        return velocity_at(student, y_, t_, cond)

    with torch.no_grad():
        if time_step is None:
            F_minus, cs_dF = torch.func.jvp(F_of, (y, t), (_bcast(cs, y) * dy, cs * rate))
        else:
            F_minus, cs_dF = torch.func.jvp(lambda y_: F_of(y_, t), (y,), (_bcast(cs, y) * dy,))
            lo, hi = tau_range(student.schedule)
            up, down = (tau + time_step).clamp(max=hi), (tau - time_step).clamp(min=lo)
            dF_dtau = (trig_F(student, y, up, cond) - trig_F(student, y, down, cond)) / _bcast(up - down, y)
            cs_dF = cs_dF + _bcast(cs, y) * dF_dtau
    return -_bcast(cos**2, y) * (F_minus - dy) - r * (_bcast(cs, y) * y + cs_dF)


def normalise_tangent(g: Tensor, c: float = 0.1) -> Tensor:
    """Tangent normalisation g / (||g|| + c) per sample (sCM Sec. 4.1)."""
    norm = g.float().flatten(1).norm(dim=1)
    return g.float() / (norm + c).view(-1, *([1] * (g.ndim - 1)))


class AdaptiveWeight(nn.Module):
    """w_phi(tau), the adaptive weighting's log-variance (sCM Sec. 4.2): Fourier features of
    c_noise = log(tan tau) / 4 into a small MLP. Returns u = w - log D: the last layer starts at 0, so
    training starts from e^w / D = 1 (the plain sum of squares) and ``gain`` multiplies the output
    (a learning-rate multiplier under Adam, so the weighting adapts within a few hundred steps)."""

    def __init__(self, features: int = 8, hidden: int = 32, gain: float = 50.0):
        super().__init__()
        self.gain = float(gain)
        self.register_buffer("freqs", torch.arange(1, features + 1, dtype=torch.float32) * (math.pi / 2))
        self.mlp = nn.Sequential(nn.Linear(2 * features + 1, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tau: Tensor) -> Tensor:
        c = (torch.log(torch.tan(tau)) / 4).float().view(-1, 1)  # (B, 1)
        h = torch.cat([c, torch.sin(c * self.freqs), torch.cos(c * self.freqs)], 1)
        return self.gain * self.mlp(h).squeeze(1)  # (B,)


# -- the objectives ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SCM(Objective):
    """sCM: continuous-time consistency distillation in TrigFlow (Lu & Song 2024, Algorithm 1).

    Defaults: proposal tan(tau) = exp(N(-0.8, 1.6^2)) (NVlabs/rcm's p_G); tangent normalisation c = 0.1;
    tangent warmup over the first 10% of training (the paper: 10k iterations of much longer runs);
    adaptive weighting on. 2-step sampling at the intermediate t = 1.1 of sCM's 2-step sampler, read
    in fewstep's unit-noise TrigFlow (EDM sigma 1.96); sCM writes it with sigma_d = 0.5 (EDM sigma
    0.98, ``sigma_data=0.5``), which puts the midpoint at a noise level our unit-variance data rarely
    reaches, so it samples worse. Changed
    for fewstep: ``weight_gain`` (see :class:`AdaptiveWeight`), and
    ``time_step`` = 0.005: dF/dtau by rCM's semi-continuous difference instead of the exact JVP
    (``time_step=None``), whose target was dominated by time-embedding wiggles on the digits teacher.
    """

    name: ClassVar[str] = "scm"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = "Lu & Song 2024, Simplifying, stabilizing and scaling continuous-time consistency models"
    inv_sigma_weight: ClassVar[bool] = False  # TBCM's extra 1/sigma loss weight

    p_mean: float = -0.8
    p_std: float = 1.6
    tangent_c: float = 0.1
    tangent_warmup: float = 0.1  # fraction of training over which r goes 0 -> 1
    adaptive_weighting: bool = True
    weight_gain: float = 50.0
    mid_times: tuple[float, ...] = (1.1,)  # TrigFlow times of the intermediate sampling steps
    sigma_data: float = 1.0  # the sigma_d in which ``mid_times`` are written (only used for the grid)
    x0_boundary_scaling: float = 0.01  # boundary timestep_scaling for x0-prediction students (see student_spec)
    time_step: float | None = 0.005  # h of rCM's semi-continuous dF/dtau (None: full JVP, the paper)

    def __post_init__(self):
        if self.p_std <= 0 or self.tangent_c <= 0 or self.tangent_warmup < 0:
            raise ValueError("need p_std > 0, tangent_c > 0 and tangent_warmup >= 0")
        if not all(0 < m < math.pi / 2 for m in self.mid_times):
            raise ValueError(f"mid_times {self.mid_times} must lie in (0, pi/2)")
        object.__setattr__(self, "mid_times", tuple(float(m) for m in self.mid_times))

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        """A copy of the teacher. eps-, v- and flow-predictions give f(y, 0) = y by themselves (f is
        their converted x0); an x0-prediction net does not, so it gets the consistency skip/out
        boundary (Song et al. 2023, Eq. 5), smooth over the first few % of net time."""
        if teacher.prediction == "x0":
            return StudentSpec(boundary=Boundary(sigma_data=0.5, timestep_scaling=self.x0_boundary_scaling))
        return StudentSpec()

    def setup(self, module: DistillModule) -> None:
        if self.adaptive_weighting:
            module.weight_net = AdaptiveWeight(gain=self.weight_gain)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), *((Part("weight_net"),) if self.adaptive_weighting else ()))

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        return SamplerRule("consistency", trig_grid(teacher.schedule, steps, self.mid_times, self.sigma_data))

    # -- training pairs: (y, tau, cond, dy/dtau from the teacher) ------------------------------------
    def pairs(
        self, module: DistillModule, batch: Batch, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Noised real data y = cos x0 + sin eps at tau from the proposal, and the teacher's velocity."""
        x0 = batch.x0
        _, tau = lognormal_times(module.teacher.schedule, x0.shape[0], self.p_mean, self.p_std, generator, x0.device)
        eps = randn(x0.shape, generator, x0)
        y = _bcast(torch.cos(tau), x0) * x0 + _bcast(torch.sin(tau), x0) * eps
        with torch.no_grad():
            dy = trig_F(module.teacher, y, tau, batch.cond, module.teacher_guidance)
        return y, tau, batch.cond, dy

    def consistency_loss(
        self, module: DistillModule, y: Tensor, tau: Tensor, cond: Tensor | None, dy: Tensor
    ) -> Tensor:
        """e^w / D ||F_theta - F_theta^- - g||^2 - w per sample (sCM Algorithm 1), reported minus log D."""
        r = tangent_ratio(module.progress, self.tangent_warmup)
        g = normalise_tangent(scm_tangent(module.student, y, tau, cond, dy, r, self.time_step), self.tangent_c)
        F = trig_F(module.student, y, tau, cond).float()
        sq = (F - F.detach() - g).pow(2).flatten(1).sum(1)  # (B,): value ||g||^2, gradient -2 g dF/dtheta
        if self.inv_sigma_weight:
            sq = sq / torch.tan(tau).float()
        if not self.adaptive_weighting:
            return sq
        u = module.weight_net(tau)  # w - log D
        return torch.exp(u) * sq - u

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return self.consistency_loss(module, *self.pairs(module, batch, generator))


@dataclass(frozen=True)
class RCM(SCM):
    """rCM: sCM plus a DMD reverse-divergence regulariser on the student's own samples (Zheng et al.
    2025, "Large scale diffusion distillation via score-regularized continuous-time consistency").

    Per step (following NVlabs/rcm ``T2VDistillModel_rCM``): the sCM term with a fixed weighting (no
    adaptive weights; rCM's loss_scale 100 on the summed squares); then the student generates with
    n = step % max_simulation_steps + 1 consistency steps from pure noise (intermediate TrigFlow times
    drawn from p_D and kept decreasing; gradient through the last step only), and after the tangent
    warmup the DMD loss (DMD Eq. 7-8, ``critic.dmd_direction`` at times from p_D = LogNormal(0, 1.6))
    is added with weight ``dmd_weight``; the fake score (a teacher copy, ``module.critic``) is trained
    by denoising on the same samples, detached, in the same step.
    ``dmd_weight`` = 0.02 keeps rCM's ratio loss_scale_dmd / loss_scale = 1/100 (``dmd_loss`` has a 1/2);
    rCM sums its squares over dimensions, so the DMD term here is D * ``dmd_loss`` like the sCM term.
    """

    name: ClassVar[str] = "rcm"
    paper: ClassVar[str] = (
        "Zheng et al. 2025, Large scale diffusion distillation via score-regularized continuous-time consistency"
    )

    adaptive_weighting: bool = False
    dmd_weight: float = 0.02
    dmd_p_mean: float = 0.0
    dmd_p_std: float = 1.6
    max_simulation_steps: int = 4

    def __post_init__(self):
        super().__post_init__()
        if self.dmd_weight < 0 or self.dmd_p_std <= 0 or self.max_simulation_steps < 1:
            raise ValueError("need dmd_weight >= 0, dmd_p_std > 0 and max_simulation_steps >= 1")

    def setup(self, module: DistillModule) -> None:
        super().setup(module)
        module.critic = make_fake_score(module.teacher).requires_grad_(True)  # trainable even for foreign nets

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (*super().parts(module), Part("critic"))

    def simulate(
        self,
        module: DistillModule,
        like: Tensor,
        cond: Tensor | None,
        steps: int,
        generator: torch.Generator,
        with_grad: bool,
    ) -> Tensor:
        """The student's samples after ``steps`` consistency steps from noise at t_max, shaped like
        ``like`` (rCM ``backward_simulation``)."""
        student, sched, n = module.student, module.student.schedule, like.shape[0]
        x = randn(like.shape, generator, like) * float(sched.sigma(sched.t_max))
        t = torch.full((n,), float(sched.t_max), dtype=torch.float64, device=x.device)
        for i in range(steps):
            last = i == steps - 1
            with torch.set_grad_enabled(with_grad and last):
                x0 = student(x, t, cond)
            if last:
                return x0
            s, _ = lognormal_times(sched, n, self.dmd_p_mean, self.dmd_p_std, generator, x.device)
            t = torch.minimum(s, t)
            x = _bcast(sched.alpha(t), x0) * x0.detach() + _bcast(sched.sigma(t), x0) * randn(x0.shape, generator, x0)
        raise AssertionError("unreachable")

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """The three per-sample parts: "scm" and "dmd" train the student, "critic" the fake score."""
        scm = super().loss(module, batch, generator)
        n, cond = batch.size, batch.cond
        active = self.dmd_weight > 0 and tangent_ratio(module.progress, self.tangent_warmup) >= 1.0
        k = int(module.iteration) % self.max_simulation_steps + 1
        x = self.simulate(module, batch.x0, cond, k, generator, with_grad=active)
        if active:
            t, _ = lognormal_times(module.teacher.schedule, n, self.dmd_p_mean, self.dmd_p_std, generator, x.device)
            direction = dmd_direction(module.teacher, module.critic, x, cond, generator, module.teacher_guidance, t)
            dmd = self.dmd_weight * x[0].numel() * dmd_loss(x, direction)  # rCM sums both terms over dimensions
        else:
            dmd = torch.zeros_like(scm)
        return {"scm": scm, "dmd": dmd, "critic": fake_score_loss(module.critic, x.detach(), cond, generator)}

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.terms(module, batch, generator).values())


@dataclass(frozen=True)
class TBCM(SCM):
    """TBCM: image-free sCM on points of the teacher's own sampling trajectories (Tang et al. 2025,
    "Image-free timestep distillation via continuous-time consistency with trajectory-sampled pairs").

    Following hustvl/TBCM ``train_tbcm.py``: no real image is ever noised; the training states are the
    teacher's own trajectory states after the initial noise. Each step TBCM draws one time per interval
    of a 16-point reference route (rectified-flow times with shift 2.5, ``tbcm_route_times``), runs the
    teacher through those times with TrigFlow-Euler (= DDIM) steps, and trains sCM's loss at every
    visited state with dy/dtau the teacher velocity already computed there, weighted by its adaptive
    weight times 1/sigma = 1/tan(tau). Here the trajectories are the runner's cached ones
    (``TrajectoryConfig``, on their own grid): each sample draws a time tau from TBCM's route
    distribution, takes the cached state at the last grid time at or above tau and continues it to tau
    with one teacher DDIM step (``jitter``; ``jitter=False`` uses the cached grid states themselves).
    ``route_shift`` 2.5 is TBCM's (1024 px); lower it for a student trained from scratch, which also
    needs low-noise times. 2-step sampling at TBCM's intermediate t = 1.0.
    """

    name: ClassVar[str] = "tbcm"
    data: ClassVar[str] = "trajectory"
    paper: ClassVar[str] = (
        "Tang et al. 2025, Image-free timestep distillation via continuous-time consistency with trajectory-sampled pairs"
    )
    inv_sigma_weight: ClassVar[bool] = True

    mid_times: tuple[float, ...] = (1.0,)
    jitter: bool = True  # times from TBCM's route, reached from the cached grid by one teacher step
    route_steps: int = 16
    route_shift: float = 2.5

    def pairs(
        self, module: DistillModule, batch: Batch, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        traj, ts = batch.traj, batch.traj_t.to(torch.float64)  # (B, K+1, ...), (B, K+1) ending at 0
        n = traj.shape[0]
        teacher, sched, w = module.teacher, module.teacher.schedule, module.teacher_guidance
        rows = torch.arange(n, device=traj.device)
        grid_tau = tau_of_t(sched, ts[:, :-1])  # (B, K) descending, the nonzero grid times
        if not self.jitter:  # a cached state itself, after the initial noise
            k = torch.randint(1, grid_tau.shape[1], (n,), generator=generator).to(traj.device)
            t = ts[rows, k]
            y = traj[rows, k] / _bcast(trig_scale(sched, t), traj[:, 0])
            tau = grid_tau[rows, k]
        else:
            tau = tbcm_route_times(sched, n, self.route_steps, self.route_shift, generator).to(traj.device)
            k = ((grid_tau >= tau[:, None]).sum(1) - 1).clamp(min=0)  # last grid time at or above tau
            t_k, tau_k = ts[rows, k], grid_tau[rows, k]
            y_k = traj[rows, k] / _bcast(trig_scale(sched, t_k), traj[:, 0])
            with torch.no_grad():  # TrigFlow-Euler (= DDIM) step along the teacher's ODE from the grid to tau
                F_k = trig_F(teacher, y_k, tau_k, batch.cond, w)
                h = tau_k - tau
                y = _bcast(torch.cos(h), y_k) * y_k - _bcast(torch.sin(h), y_k) * F_k
        with torch.no_grad():
            dy = trig_F(teacher, y, tau, batch.cond, w)
        return y, tau, batch.cond, dy


def tbcm_route_times(schedule: Schedule, n: int, steps: int, shift: float, generator: torch.Generator) -> Tensor:
    """TBCM's training times (hustvl/TBCM ``compute_refer_route`` + ``sample_ordered_timesteps_from_ref``):
    a ``steps``-point reference route, uniform in rectified-flow time between the shifted ends and
    shifted again (shift s: u -> s u / (1 + (s - 1) u)), mapped to TrigFlow tau = arctan(u / (1 - u))
    with pure noise first; one uniform tau per route interval, the interval uniform. Clamped to the
    schedule's tau range. (B,) float64."""

    def shifted(u):
        return shift * u / (1 + (shift - 1) * u)

    u = shifted(
        torch.linspace(1.0, float(shifted(torch.tensor(1e-3, dtype=torch.float64))), steps, dtype=torch.float64)
    )
    route = torch.atan(u / (1 - u).clamp(min=1e-12))  # (steps,) descending; route[0] = pi/2
    lo, hi = tau_range(schedule)
    route = route.clamp(lo, hi)
    i = torch.randint(0, steps - 1, (n,), generator=generator)
    v = torch.rand(n, generator=generator, dtype=torch.float64)
    return route[i + 1] + v * (route[i] - route[i + 1])


__all__ = [
    "RCM",
    "SCM",
    "TBCM",
    "AdaptiveWeight",
    "lognormal_times",
    "normalise_tangent",
    "scm_tangent",
    "t_of_tau",
    "tangent_ratio",
    "tau_of_t",
    "tau_range",
    "tbcm_route_times",
    "time_rate",
    "trig_F",
    "trig_grid",
    "trig_scale",
    "velocity_at",
]
