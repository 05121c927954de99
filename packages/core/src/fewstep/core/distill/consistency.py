"""Discrete-time consistency distillation: CD/LCM, MLCM, Hyper-SD (TSCD), SCott and SLAM.

All five train a student f_theta against an EMA target f_theta^- (``module.target``) on pairs of
points of the teacher's probability-flow ODE one skip apart on a fixed time grid (LCM's skipping-step
grid; 10 intervals by default here, 50 in LCM and SLAM; MLCM uses the trajectory grid). They differ in where the pair comes from and what the
consistency is relative to:

- CD / LCM: x_{t_{n+k}} from real data, one teacher DDIM step to t_n, f(x_{t_{n+k}}) = f^-(x_{t_n}),
  the LCM skip/out boundary f(x, t_min) = x; samples by multistep consistency sampling.
- MLCM / Hyper-SD (TSCD): the grid is cut into S segments and consistency only holds inside a
  segment, f_seg(x_t) = DDIM jump with x0_theta(x_t) to the segment's lower end; S shrinks over
  training (8 -> 4 -> 2 -> 1 and stops at the student's step count); samples by DDIM through the
  K segment ends. MLCM takes its pairs from cached teacher trajectories; Hyper-SD from real data and
  adds a DMD score-distillation term when the student has one step.
- SCott: CD whose teacher step is a stochastic SDE-DPM-Solver++(1) step (DDIM with eta > 0, in
  sub-steps), plus a non-saturating adversarial term (``gan.py``).
- SLAM: CD whose student sees points on the sub-path linear ODE between x_{t_{n+k}} and the teacher's
  x_{t_n}, conditioned on the interpolation weight gamma.

Shared pieces are the small functions below (grid, segments, per-sample DDIM, teacher step, the
segment target); each objective's ``loss`` is a screen long. Hyperparameters are the papers'
(EMA 0.95, pseudo-Huber) except the skip grid, scaled from LCM's 50 intervals to 10 for a
few-hundred-iteration budget (see ConsistencyDistillation); learning rate, EMA of the shipped weights and
iteration budget come from ``DistillConfig``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..card import Boundary, SamplerRule
from ..denoiser import Denoiser, _bcast, to_x0_eps
from ..parts import STUDENT, Part
from ..schedules import Schedule
from ..solvers import sampling_grid
from .base import Batch, DistillModule, Objective, StudentSpec, mse, pseudo_huber, randn
from .critic import dmd_direction, dmd_loss, fake_score_loss, make_fake_score, sample_times
from .gan import Discriminator, gan_losses
from ..updates import alpha_sigma, ddim_jump, ddim_x0, noise_to, sde_step
from .trajectories import TrajectoryConfig

LCM_BOUNDARY = Boundary(sigma_data=0.5, timestep_scaling=10.0)  # LCM's c_skip / c_out (Luo et al. 2023, Eq. 4)
DISTANCES = ("pseudo_huber", "l2")


# -- grids and segments ---------------------------------------------------------------------------
def skip_grid(schedule: Schedule, intervals: int, grid: str = "uniform") -> Tensor:
    """(M+1,) descending float64 times from t_max to 0: the teacher's skipping-step grid.

    LCM (Luo et al. 2023, Sec. 4.3) uses the 50 DDIM timesteps of a 1000-step teacher (skip k = 20);
    for VPDiscrete the "uniform" grid with 50 intervals is that grid up to rounding. The last interval
    ends at the clean time 0.
    """
    return sampling_grid(schedule, intervals, grid, denoise_to_zero=True)


def segment_bounds(intervals: int, segments: int) -> Tensor:
    """(S+1,) grid indices 0 = e_0 < ... < e_S = M of S (near-)equal segments of an M-interval grid."""
    if not 1 <= segments <= intervals:
        raise ValueError(f"{segments} segments need 1 <= segments <= {intervals} grid intervals")
    return torch.round(torch.arange(segments + 1, dtype=torch.float64) * intervals / segments).long()


def segment_end(j: Tensor, bounds: Tensor) -> Tensor:
    """Index of the lower-time end of the segment that holds the interval starting at index j (B,)."""
    return bounds[torch.searchsorted(bounds, j, right=True)]


def boundary_grid(ts: Tensor, steps: int) -> list[float]:
    """The ``steps`` segment starts of ``ts`` and a final 0: the grid a ``steps``-step student samples on."""
    bounds = segment_bounds(len(ts) - 1, steps)
    return [float(t) for t in ts[bounds[:-1]]] + [0.0]


def pick(ts: Tensor, idx: Tensor, like: Tensor) -> Tensor:
    """ts[idx] as float64 (B,) on ``like``'s device."""
    return ts[idx.cpu()].to(like.device)


def rows(mask: Tensor, x: Tensor) -> Tensor:
    """A per-sample bool mask (B,) shaped to broadcast against x (B, ...)."""
    return mask.view(-1, *([1] * (x.ndim - 1))).to(x.device)


@torch.no_grad()
def teacher_step(
    module: DistillModule, x: Tensor, t: Tensor, s: Tensor, cond: Tensor | None,
    eta: float = 0.0, generator: torch.Generator | None = None, substeps: int = 1,
) -> Tensor:
    """x_t -> x_s with the frozen teacher (its configured CFG): DDIM (eta = 0; LCM's solver psi) or the
    stochastic SDE step (eta > 0; SCott), in ``substeps`` equal sub-intervals of t."""
    sched = module.teacher.schedule
    for i in range(substeps):
        t_i, t_j = t + (s - t) * (i / substeps), t + (s - t) * ((i + 1) / substeps)
        x0 = module.teacher_x0(x, t_i, cond)
        x = ddim_jump(sched, x, x0, t_i, t_j) if eta == 0 else sde_step(sched, x, x0, t_i, t_j, eta, randn(x.shape, generator, x))
    return x


@torch.no_grad()
def target_x0(net: Denoiser, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    """f^-(x, t): the EMA target's prediction, and x itself at t = 0 (the boundary condition)."""
    out = net(x, t.clamp(min=net.schedule.t_min), cond)
    return torch.where(rows(t == 0, x), x, out)


def distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """d(a, b) per sample: pseudo-Huber (Song & Dhariwal 2023, Sec. 3.3; c = 0.00054 sqrt(d)) or L2."""
    return pseudo_huber(a, b) if kind == "pseudo_huber" else mse(a, b)


def ema_step(module: DistillModule, decay: float) -> None:
    """theta^- <- mu theta^- + (1 - mu) theta at the start of each training forward, i.e. after the
    previous optimizer step (Song et al. 2023, Alg. 2, last line)."""
    if module.training:
        module.update_target(decay)


def segment_consistency(
    module: DistillModule, x_t: Tensor, t: Tensor, x_s: Tensor, s: Tensor, end: Tensor, cond: Tensor | None, kind: str
) -> Tensor:
    """Multistep consistency loss (Heek et al. 2024; Hyper-SD's TSCD, Ren et al. 2024, Sec. 3.1).

    Target: the EMA model's DDIM jump from the teacher point (x_s, s) to the segment end (x_s itself
    when s is the end), expressed as the x0 that takes (x_t, t) there by DDIM; the student's x0 at
    (x_t, t) is pulled to it. Per sample (B,).
    """
    sched = module.student.schedule
    with torch.no_grad():
        x0_target = target_x0(module.target, x_s, s, cond)
        x_end = torch.where(rows(s == end, x_s), x_s, ddim_jump(sched, x_s, x0_target, s, end))
        x0_ref = ddim_x0(sched, x_t, t, x_end, end)
    return distance(module.student(x_t, t, cond), x0_ref, kind)


def segment_schedule(segments: tuple[int, ...], steps: int) -> list[int]:
    """The stages' segment counts: those of ``segments`` above the student's step count, then the step count."""
    return sorted({s for s in segments if s > steps} | {steps}, reverse=True)


def current_segments(module: DistillModule, segments: tuple[int, ...]) -> int:
    """S for the current stage; each stage gets an equal share of training (``module.progress``)."""
    stages = segment_schedule(segments, module.student.card.student_steps or 1)
    return stages[min(int(module.progress * len(stages)), len(stages) - 1)]


def boundary_scalings(den: Denoiser, t: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of the Denoiser's consistency boundary at t (LCM's, as ``Denoiser`` applies them)."""
    sd, k = den.boundary.sigma_data, den.boundary.timestep_scaling
    n = k * den.schedule.net_time(t).clamp(min=0)
    return sd**2 / (n**2 + sd**2), n / torch.sqrt(n**2 + sd**2)


def _check(kind: str, ema: float) -> None:
    if kind not in DISTANCES:
        raise ValueError(f"distance={kind!r}; use one of {DISTANCES}")
    if not 0 <= ema < 1:
        raise ValueError(f"target_ema={ema} must be in [0, 1)")


def _real(batch: Batch) -> Tensor:
    if batch.x0 is None:
        raise ValueError("this objective trains on real data (data='real'): the batch has no x0")
    return batch.x0


# -- CD / LCM ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsistencyDistillation(Objective):
    """Consistency distillation (Song et al. 2023, Alg. 2, Eq. 7) in LCM's form (Luo et al. 2023, Alg. 1).

    n ~ U{0..M-1}; x_{t_{n+k}} = alpha x0 + sigma eps from real data; x_hat_{t_n} = one teacher DDIM
    step (with the teacher's CFG w); loss d(f_theta(x_{t_{n+k}}), f_{theta^-}(x_hat_{t_n})), theta^-
    the EMA target. f carries LCM's skip/out boundary so f(x, t_min) = x. Defaults are LCM's EMA
    0.95 and pseudo-Huber distance, but 10 skip intervals instead of LCM's 50 (k = 20 of 1000): the
    consistency at t_max has to travel M skips up from the boundary through the EMA target, which
    50 skips do not finish in a few hundred iterations (our 600-iteration budget; 2-D toy: 1-step
    sliced W 0.24 with 10 skips vs 0.58 with 16 and 0.82 with 50 after 600 iterations). (LCM's
    w-conditioning is not used: the student distils one guidance scale, ``teacher_guidance``.)
    """

    name: ClassVar[str] = "cd"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = "Song et al. 2023, Consistency Models; Luo et al. 2023, Latent Consistency Models"
    fsdp_ready: ClassVar[bool] = True  # one student, target and teacher call per iteration on every rank

    intervals: int = 10  # M skip intervals of the teacher grid (LCM: 50 = 1000 / k, k = 20; scaled, see above)
    grid: str = "uniform"
    target_ema: float = 0.95  # mu of theta^- (LCM); CM on pixels used 0.95 too (CD, LPIPS)
    distance: str = "pseudo_huber"

    def __post_init__(self):
        _check(self.distance, self.target_ema)
        if self.intervals < 1:
            raise ValueError("intervals must be >= 1")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec(boundary=LCM_BOUNDARY)

    def setup(self, module: DistillModule) -> None:
        module.add_target()

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """Multistep consistency sampling (Song et al. 2023, Alg. 1) on K points of the training grid."""
        return SamplerRule("consistency", boundary_grid(skip_grid(teacher.schedule, self.intervals, self.grid), steps))

    def pairs(self, module: DistillModule, batch: Batch, generator: torch.Generator, eta: float = 0.0, substeps: int = 1):
        """(x_{t_{n+k}}, t_{n+k}, x_hat_{t_n}, t_n) for a batch of real data, the teacher step taken."""
        x0 = _real(batch)
        ts = skip_grid(module.student.schedule, self.intervals, self.grid)
        n = torch.randint(0, self.intervals, (x0.shape[0],), generator=generator)
        t, s = pick(ts, n, x0), pick(ts, n + 1, x0)
        x_t = noise_to(module.student.schedule, x0, t, randn(x0.shape, generator, x0))
        x_s = teacher_step(module, x_t, t, s, batch.cond, eta, generator, substeps)
        return x_t, t, x_s, s

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        ema_step(module, self.target_ema)
        x_t, t, x_s, s = self.pairs(module, batch, generator)
        target = target_x0(module.target, x_s, s, batch.cond)
        return distance(module.student(x_t, t, batch.cond), target, self.distance)


# -- SCott --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SCott(ConsistencyDistillation):
    """Stochastic consistency distillation (Liu et al. 2024, SCott): LCM-style CD whose teacher solver
    is an SDE solver, SDE-DPM-Solver++(1) with noise strength ``eta`` taken in ``substeps`` sub-steps
    over each skip (the paper's noise-strength control and multi-step SDE sampling), plus a
    non-saturating adversarial term on the student's x0 predictions against real data, both noised
    to a common small t' (a discriminator on (x, t, label); SCott's is a LoRA on the teacher's UNet
    encoder, here the compact head of ``gan.py``). eta, substeps and adv_weight are our choices.
    """

    name: ClassVar[str] = "scott"
    fsdp_ready: ClassVar[bool] = False  # its adversarial term goes through gan.frozen_call
    paper: ClassVar[str] = "Liu et al. 2024, SCott: Accelerating Diffusion Models with Stochastic Consistency Distillation"

    eta: float = 0.2  # SDE noise strength: 0 = DDIM (plain CD), 1 = SDE-DPM-Solver++(1)
    substeps: int = 2  # SDE sub-steps per skip
    adv_weight: float = 0.1  # lambda of the generator's adversarial term
    adv_t_max: float = 0.25  # real and fake are both noised to t' ~ U[0, adv_t_max] of [t_min, t_max]
    disc_width: int = 64

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eta <= 1 or self.substeps < 1 or self.adv_weight < 0:
            raise ValueError("need 0 <= eta <= 1, substeps >= 1, adv_weight >= 0")

    def setup(self, module: DistillModule) -> None:
        module.add_target()
        if self.adv_weight > 0:
            t = module.teacher
            module.disc = Discriminator(t.sample_shape, t.num_classes, self.disc_width)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), *((Part("disc"),) if self.adv_weight > 0 else ()))

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        ema_step(module, self.target_ema)
        x_t, t, x_s, s = self.pairs(module, batch, generator, self.eta, self.substeps)
        target = target_x0(module.target, x_s, s, batch.cond)
        x0_pred = module.student(x_t, t, batch.cond)
        loss = distance(x0_pred, target, self.distance)
        if self.adv_weight > 0:
            sched, x0 = module.student.schedule, _real(batch)
            t_d = sample_times(sched, x0.shape[0], generator, 0.0, self.adv_t_max, x0.device)
            fake = noise_to(sched, x0_pred, t_d, randn(x0.shape, generator, x0))
            real = noise_to(sched, x0, t_d, randn(x0.shape, generator, x0))
            g, d = gan_losses(module.disc, fake, real, sched.net_time(t_d), batch.cond)
            loss = loss + self.adv_weight * g + d  # generator and discriminator gradients are disjoint
        return loss


# -- SLAM ---------------------------------------------------------------------------------------------
def sub_path_point(schedule: Schedule, x_t: Tensor, t: Tensor, x_s: Tensor, s: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor]:
    """A point of the sub-path linear ODE between (x_s, s) and (x_t, t), s < t (Xu et al. 2024, SL-ODE):
    x_gamma = gamma x_t + (1 - gamma) (alpha_t / alpha_s) x_s, and the noise level it is read at,
    sigma_gamma^2 = sigma'^2 + gamma^2 (sigma_t^2 - sigma'^2) with sigma' = sigma_s alpha_t / alpha_s
    (the reference code's parametrisation; its signal level is alpha_t). gamma = 1 gives (x_t, sigma_t)."""
    a_t, s_t = alpha_sigma(schedule, t)
    a_s, s_s = alpha_sigma(schedule, s)
    ratio = a_t / a_s
    x_g = _bcast(gamma, x_t) * x_t + _bcast((1 - gamma) * ratio, x_s) * x_s
    s_prime = s_s * ratio
    sigma_g = torch.sqrt(s_prime**2 + gamma**2 * (s_t**2 - s_prime**2))
    return x_g, sigma_g


def gamma_x0(den: Denoiser, x: Tensor, t: Tensor, sigma: Tensor, gamma: Tensor, cond: Tensor | None) -> Tensor:
    """The student's consistency output at a sub-path point: the net at time t (and gamma, when the net
    takes it through its guidance input), read as x = alpha_t x0 + sigma eps, then the boundary."""
    w = gamma.to(x.dtype) if den.guidance_embedded else 1.0
    alpha, _ = alpha_sigma(den.schedule, t)
    x0, _ = to_x0_eps(den.raw(x, t, cond, w), den.prediction, x, alpha, sigma)
    if den.boundary is not None:
        c_skip, c_out = boundary_scalings(den, t)
        x0 = _bcast(c_skip, x) * x + _bcast(c_out, x) * x0
    return x0


@dataclass(frozen=True)
class SLAM(ConsistencyDistillation):
    """Sub-path linear approximation model (Xu et al. 2024, SLAM / SPLAM; ECCV 2024).

    Followed from the paper's SL-ODE and its reference distillation code (MCG-NJU/SPLAM, SPLAD): as
    LCM, x_{t_{n+k}} from real data and x_{t_n} by one teacher DDIM step; then gamma ~ U[0, 1] and the
    student is evaluated at the sub-path point x_gamma = gamma x_{t_{n+k}} + (1 - gamma)
    (alpha_{t_{n+k}} / alpha_{t_n}) x_{t_n} at time t_{n+k}, with gamma as an extra input (the
    guidance-embedding slot of a fewstep UNet; gamma = 1, the default guidance, is the plain
    trajectory point used when sampling) and its x0 read at noise level sigma_gamma
    (:func:`sub_path_point`). Loss d(f_theta(x_gamma, t_{n+k}, gamma), f_{theta^-}(x_{t_n}, t_n, 1)).
    gamma = 1 is LCM's loss; smaller gamma asks for consistency on the shorter remaining sub-path,
    the progressive error estimate of the paper. Nets that cannot take gamma (foreign nets, the toy
    MLP) see x_gamma and sigma_gamma only. Defaults are the reference script's: 50 skip intervals,
    EMA 0.95, Huber, gamma ~ U[0, 1].

    Caveat: reading x0 = (x_gamma - sigma_gamma eps) / alpha_t is very sensitive where alpha_t is
    small. Our linear-beta teachers end at alpha_T = 0.0064 (SD's scaled-linear: 0.068), so near
    t_max a gamma < 1 point costs a much larger loss than LCM's until the net has learnt to use
    gamma through its zero-initialised embedding; short runs therefore favour gamma near 1
    (``gamma_min``; gamma_min = 1 is exactly LCM). Figures: docs/benchmarks/distill_trajectory.md.
    """

    name: ClassVar[str] = "slam"
    fsdp_ready: ClassVar[bool] = False  # not yet run sharded (tests)
    paper: ClassVar[str] = "Xu et al. 2024, Accelerating Image Generation with Sub-path Linear Approximation Model"

    intervals: int = 50  # the reference script's grid: short skips keep x_gamma near the trajectory (see above)
    gamma_min: float = 0.0  # gamma ~ U[gamma_min, 1] (the paper: U[0, 1])

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.gamma_min <= 1:
            raise ValueError(f"gamma_min={self.gamma_min} must be in [0, 1]")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        from ..nets import net_spec

        try:
            net_spec(teacher.net)
            embed = True
        except ValueError:  # a foreign net has no guidance input to carry gamma
            embed = False
        return StudentSpec(boundary=LCM_BOUNDARY, guidance_embed=embed)

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        ema_step(module, self.target_ema)
        x_t, t, x_s, s = self.pairs(module, batch, generator)
        target = target_x0(module.target, x_s, s, batch.cond)  # gamma = 1
        u = torch.rand(x_t.shape[0], generator=generator, dtype=torch.float64).to(x_t.device)
        gamma = self.gamma_min + (1.0 - self.gamma_min) * u
        x_g, sigma_g = sub_path_point(module.student.schedule, x_t, t, x_s, s, gamma)
        return distance(gamma_x0(module.student, x_g, t, sigma_g, gamma, batch.cond), target, self.distance)


# -- segmented: MLCM and Hyper-SD -----------------------------------------------------------------------
@dataclass(frozen=True)
class MultistepConsistency(Objective):
    """Multistep latent consistency distillation (Xie et al. 2024, MLCM; after Heek et al. 2024).

    Data are cached teacher sampling trajectories (``batch.traj`` at ``batch.traj_t``): a pair is a
    trajectory state x_{t_j} and the next one x_{t_{j+1}} (the teacher's own solver step, so no teacher
    call in training). The trajectory grid is cut into S segments; the student's x0 at (x_{t_j}, t_j)
    must DDIM-jump to where the EMA target's jump from x_{t_{j+1}} lands at the segment end
    (:func:`segment_consistency`). Progressive segment schedule: S = 8 -> 4 -> 2 -> ... down to the
    student's K, an equal share of training each (our reading of the paper's progressive strategy).
    The student samples deterministically by DDIM through its K segment ends (K NFE).
    """

    name: ClassVar[str] = "mlcm"
    data: ClassVar[str] = "trajectory"
    paper: ClassVar[str] = "Xie et al. 2024, MLCM: Multistep Consistency Distillation of Latent Diffusion Model"

    segments: tuple[int, ...] = (8, 4, 2, 1)
    target_ema: float = 0.95
    distance: str = "pseudo_huber"

    def __post_init__(self):
        _check(self.distance, self.target_ema)
        if not self.segments or min(self.segments) < 1:
            raise ValueError("segments must be positive counts")

    def setup(self, module: DistillModule) -> None:
        module.add_target()

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """DDIM through the segment ends on the default trajectory grid (re-aligned in ``loss`` to the
        grid the trajectories were actually made on)."""
        tc = TrajectoryConfig()
        return SamplerRule("ddim", boundary_grid(sampling_grid(teacher.schedule, tc.num_steps, tc.grid, True), steps))

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        if batch.traj is None or batch.traj_t is None:
            raise ValueError("mlcm trains on teacher trajectories (data='trajectory'): the batch has none")
        ema_step(module, self.target_ema)
        ts = batch.traj_t[0].detach().to("cpu", torch.float64)  # (M+1,) descending, ends at 0
        m, k = len(ts) - 1, module.student.card.student_steps or 1
        if k > m:
            raise ValueError(f"a {k}-step student needs trajectories of at least {k} steps, got {m}")
        module.student.card = replace(module.student.card, sampler=SamplerRule("ddim", boundary_grid(ts, k)))
        bounds = segment_bounds(m, min(current_segments(module, self.segments), m))
        j = torch.randint(0, m, (batch.traj.shape[0],), generator=generator)
        rows = torch.arange(batch.traj.shape[0])
        x_t = batch.traj[rows, j.to(batch.traj.device)]
        x_s = batch.traj[rows, (j + 1).to(batch.traj.device)]
        t, s, end = pick(ts, j, x_t), pick(ts, j + 1, x_t), pick(ts, segment_end(j, bounds), x_t)
        return segment_consistency(module, x_t, t, x_s, s, end, batch.cond, self.distance)


def _fake_score(module: DistillModule) -> Denoiser:
    """DMD's fake score: a trainable copy of the teacher, or of the student's net when the teacher has
    no trainable weights (an analytic teacher such as the test mixtures)."""
    teacher = module.teacher
    if any(True for _ in teacher.net.parameters()):
        fake = make_fake_score(teacher)
    else:
        s = module.student
        fake = Denoiser(copy.deepcopy(s.net), teacher.schedule, s.prediction, sample_shape=teacher.sample_shape,
                        num_classes=teacher.num_classes, clip_x0=teacher.clip_x0)
    return fake.requires_grad_(True)


@dataclass(frozen=True)
class HyperSD(Objective):
    """Hyper-SD's trajectory segmented consistency distillation (Ren et al. 2024, Sec. 3.1, TSCD) and
    its one-step score distillation (Sec. 3.3).

    Real data, CD's skipping grid (10 intervals) and teacher DDIM step; the grid is cut into S segments and the
    multistep consistency loss holds within each (:func:`segment_consistency`); S goes 8 -> 4 -> 2 ->
    1 over training (stopping at the student's K; equal shares). For a one-step student the last stage
    adds the DMD reverse-KL term (Yin et al. 2024, Eq. 7-8; ``critic.py``) on the student's one-step
    samples from pure noise, and a fake-score critic (``module.critic``) is trained in the same step
    on detached samples throughout, so it tracks the one-step distribution when the term starts.
    Hyper-SD's human-feedback stage and its adversarial term are not reproduced (no reward models
    offline); the loss is pseudo-Huber instead of the paper's MSE+adversarial mix.
    """

    name: ClassVar[str] = "hyper-sd"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = "Ren et al. 2024, Hyper-SD: Trajectory Segmented Consistency Model for Efficient Image Synthesis"

    segments: tuple[int, ...] = (8, 4, 2, 1)
    intervals: int = 10  # skip intervals (LCM's 50 scaled to the budget, as for CD)
    grid: str = "uniform"
    target_ema: float = 0.95
    distance: str = "pseudo_huber"
    dmd_weight: float = 4.0  # weight of the DMD term (critic.dmd_loss) in the one-step stage

    def __post_init__(self):
        _check(self.distance, self.target_ema)
        if not self.segments or min(self.segments) < 1 or max(self.segments) > self.intervals:
            raise ValueError(f"segments must be counts in [1, intervals={self.intervals}]")
        if self.dmd_weight < 0:
            raise ValueError("dmd_weight must be >= 0")

    def setup(self, module: DistillModule) -> None:
        module.add_target()
        if self._dmd(module):
            module.critic = _fake_score(module)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), *((Part("critic"),) if self._dmd(module) else ()))

    def _dmd(self, module: DistillModule) -> bool:
        return self.dmd_weight > 0 and (module.student.card.student_steps or 1) == 1

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        return SamplerRule("ddim", boundary_grid(skip_grid(teacher.schedule, self.intervals, self.grid), steps))

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        ema_step(module, self.target_ema)
        x0, cond, sched = _real(batch), batch.cond, module.student.schedule
        ts = skip_grid(sched, self.intervals, self.grid)
        segs = current_segments(module, self.segments)
        n = torch.randint(0, self.intervals, (x0.shape[0],), generator=generator)
        t, s = pick(ts, n, x0), pick(ts, n + 1, x0)
        end = pick(ts, segment_end(n, segment_bounds(self.intervals, segs)), x0)
        x_t = noise_to(sched, x0, t, randn(x0.shape, generator, x0))
        x_s = teacher_step(module, x_t, t, s, cond)
        loss = segment_consistency(module, x_t, t, x_s, s, end, cond, self.distance)
        if not self._dmd(module):
            return loss
        # One-step samples from pure noise (the one-step student's sampling rule).
        t_max = torch.full((x0.shape[0],), sched.t_max, dtype=torch.float64, device=x0.device)
        z = randn(x0.shape, generator, x0) * float(sched.sigma(torch.tensor(sched.t_max, dtype=torch.float64)))
        if segs == 1:
            x_gen = module.student(z, t_max, cond)
            direction = dmd_direction(module.teacher, module.critic, x_gen, cond, generator, module.teacher_guidance)
            loss = loss + self.dmd_weight * dmd_loss(x_gen, direction)
        else:
            with torch.no_grad():
                x_gen = module.student(z, t_max, cond)
        return loss + fake_score_loss(module.critic, x_gen, cond, generator)  # critic: detached samples only


__all__ = [
    "SLAM",
    "ConsistencyDistillation",
    "HyperSD",
    "MultistepConsistency",
    "SCott",
    "boundary_grid",
    "current_segments",
    "distance",
    "gamma_x0",
    "segment_bounds",
    "segment_consistency",
    "segment_end",
    "segment_schedule",
    "skip_grid",
    "sub_path_point",
    "target_x0",
    "teacher_step",
]
