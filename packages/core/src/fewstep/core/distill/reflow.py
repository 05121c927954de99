"""Rectified-flow students: Reflow (Liu et al. 2023) and SlimFlow (Zhu et al. 2024).

Both train a rectified flow (RF) x_s = (1 - s) x0 + s z, s in [0, 1], velocity v = z - x0, on the
teacher's own coupling (z, x0): z the noise a teacher trajectory starts from, x0 where the teacher's
ODE takes it. The flow of a deterministic coupling has straight paths, so a few Euler steps (DDIM on
the RF schedule) follow it.

RF coordinates of any teacher. Every Gaussian path x_t = alpha x0 + sigma eps is the RF path up to a
change of time and scale: s = sigma / (alpha + sigma), x_rf = x_t / (alpha + sigma). The teacher's
probability-flow velocity in RF coordinates is u = eps_hat - x0_hat = (x_rf - x0_hat) / s (DDIM is
Euler in these coordinates). :func:`teacher_velocity` asks a teacher of any schedule for it; ArcFlow
uses the same helpers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..card import SamplerRule
from ..denoiser import Denoiser, _bcast
from ..schedules import RectifiedFlow, Schedule
from ..solvers.arcflow import rf_scale, rf_time, schedule_time
from .base import Batch, DistillModule, Objective, StudentSpec, copy_net, mse, randn, uniform_times


# -- RF coordinates of any teacher ----------------------------------------------------------------
def teacher_velocity(module: DistillModule, x: Tensor, s: Tensor, cond: Tensor | None) -> Tensor:
    """The teacher's (guided) probability-flow velocity u = (x - x0_hat) / s at RF state x, time s (B,)."""
    sched = module.teacher.schedule
    t = schedule_time(sched, s)
    x0 = module.teacher_x0(x * _bcast(rf_scale(sched, t), x), t.to(x.device), cond)
    return (x - x0) / _bcast(s, x)


def noise_of(batch: Batch, schedule: Schedule) -> Tensor:
    """z of the teacher's coupling: the trajectory's start traj[:, 0] = sigma(t_max) z, unscaled."""
    if batch.traj is None or batch.traj_t is None:
        raise ValueError("reflow objectives train on teacher trajectories (data='trajectory')")
    t0 = batch.traj_t[0, 0].to(torch.float64)
    return batch.traj[:, 0] / float(schedule.sigma(t0))


def rf_times(schedule: Schedule, n: int, generator: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """n RF times uniform in [lo, hi] of the schedule's [t_min, t_max] (float64, CPU)."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u


def straight(x0: Tensor, z: Tensor, s: Tensor) -> Tensor:
    """x_s = (1 - s) x0 + s z (Liu et al. 2023, Eq. 1 with their time t = 1 - s)."""
    s = _bcast(s, x0)
    return (1 - s) * x0 + s * z


def fresh_copy(net: nn.Module) -> nn.Module:
    """The teacher's architecture with fresh weights (fewstep nets rebuilt from their config, CFG
    label dropout off; foreign nets deep-copied and re-initialised where their layers allow)."""
    from ..nets import build_net, is_fewstep_net, net_spec

    if is_fewstep_net(net):
        kind, cfg = net_spec(net)
        return build_net(kind, {**cfg, "label_dropout": 0.0})
    out = copy.deepcopy(net)
    for m in out.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return out.requires_grad_(True)


def rf_sampler(steps: int) -> dict[str, Any]:
    """K Euler steps = DDIM on the RF schedule, uniform in s from t_max to 0."""
    return SamplerRule("ddim", uniform_times(RectifiedFlow(), steps))


# -- Reflow -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reflow(Objective):
    """Reflow (Liu, Gong & Liu 2023, "Flow straight and fast", ICLR): a rectified flow on the
    teacher's coupling.

    Loss (Eq. 1, time reversed, on the coupling of the "reflow" step, Algorithm 1): s ~ U[0, 1],
    x_s = (1 - s) x0 + s z, ||v(x_s, s) - (z - x0)||^2, with (z, x0) the teacher's noise and sample
    (the teacher's ODE is the 1-rectified flow being rectified). The student is an RF Denoiser
    predicting the flow velocity and samples with K uniform Euler steps. ``distill_fraction`` > 0
    ends training with the paper's k-step distillation: the same loss with s restricted to the
    K-step grid {t_max, ...}; for K = 1 it is ||z - v(z, 1) - x0||^2 (the paper uses LPIPS there;
    plain L2 here).

    ``init="teacher"`` starts from the teacher's weights (the parametrisation changes from the
    teacher's to RF velocity, so it is an initialisation, not a copy of the function), "scratch"
    from fresh weights of the same architecture. The teacher's features transfer even though its
    output parametrisation does not, so "teacher" is the default.
    """

    name: ClassVar[str] = "reflow"
    data: ClassVar[str] = "trajectory"
    paper: ClassVar[str] = "Liu, Gong & Liu 2023, Flow straight and fast (rectified flow), arXiv:2209.03003"

    init: str = "teacher"  # "teacher" weights or "scratch"
    distill_fraction: float = 0.0  # last fraction of training spent on k-step distillation (0 = reflow only)

    def __post_init__(self):
        if self.init not in ("teacher", "scratch"):
            raise ValueError(f"init={self.init!r}; use 'teacher' or 'scratch'")
        if not 0.0 <= self.distill_fraction <= 1.0:
            raise ValueError(f"distill_fraction={self.distill_fraction} must be in [0, 1]")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        if self.init == "scratch":
            net = fresh_copy(teacher.net)
        else:
            net = copy_net(teacher.net)
        return StudentSpec(net=net, schedule=RectifiedFlow(), prediction="flow")

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        return rf_sampler(steps)

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        student = module.student
        x0 = batch.traj[:, -1] if batch.traj is not None else batch.x0
        z = noise_of(batch, module.teacher.schedule)
        b = x0.shape[0]
        if module.progress >= 1.0 - self.distill_fraction and self.distill_fraction > 0:
            # k-step distillation: only the times the K-step sampler visits.
            grid = torch.tensor(uniform_times(student.schedule, student.card.student_steps or 1)[:-1], dtype=torch.float64)
            s = grid[torch.randint(0, len(grid), (b,), generator=generator)]
        else:
            s = rf_times(student.schedule, b, generator)
        s = s.to(x0.device)
        v = student(straight(x0, z, s), s, batch.cond, kind="flow")
        return mse(v, z - x0)


# -- SlimFlow -----------------------------------------------------------------------------------
def smaller_net(teacher_net: nn.Module, width: float, num_res_blocks: int | None) -> nn.Module | None:
    """A fresh UNet from the teacher's config with ``width`` x the channels (None for foreign nets)."""
    from ..nets import build_net, unet_config

    cfg = unet_config(teacher_net, "SlimFlow's smaller student")
    if cfg is None:
        return None
    cfg = {**cfg, "channels": max(1, round(cfg["channels"] * width)), "label_dropout": 0.0}
    if num_res_blocks is not None:
        cfg["num_res_blocks"] = num_res_blocks
    return build_net("unet", cfg)


@dataclass(frozen=True)
class SlimFlow(Objective):
    """SlimFlow (Zhu, Liu & Liu 2024, ECCV; yuanzhi-zhu/SlimFlow): a smaller one-step RF student.

    One run, two stages (the paper's two trainings of the same small net):

    1. Annealing reflow (first ``reflow_fraction`` of the steps): the small net is trained as a
       rectified flow on pairs whose noise anneals from independent to the teacher's coupling,
       z' = sqrt(1 - beta^2) z + beta eps, beta going linearly 1 -> 0 over ``anneal_fraction`` of
       the stage (paper: 300k of 500k iterations). beta = 1 is a plain 1-rectified flow on the
       teacher's samples (easy from scratch), beta = 0 is reflow on the teacher's coupling.
    2. Flow-guided distillation: the stage-1 net is frozen as the guide (``module.target``, the
       small 2-rectified flow) and the student, continuing from it, trains for one step with
       ||v(z, 1) - (z - x0)||^2 on the teacher pairs plus ``guide_weight`` x the guidance term:
       fresh noise eps, x_m = eps - (1 - s_m) v(eps, 1) (detached) at s_m ~ U[0.2, 0.8], one guide
       Euler step x0_g = x_m - s_m v_guide(x_m, s_m), and ||v(eps, 1) - (eps - x0_g)||^2: the
       2-step Euler prediction of the 2-rectified flow from the student's own first step (the
       released code's ``teacher_loss_new``). The paper uses LPIPS for both terms; L2 here.

    A ready 2-rectified flow can be distilled alone: pass it as ``student_net`` with
    ``reflow_fraction=0`` (the guide is then that net). The student net is the teacher's UNet with
    ``width`` x the channels and fresh weights (the paper's 27.9M..3.4M CIFAR students); it is a
    one-step model (``DistillConfig(student_steps=1)``). Trained from scratch, it wants a larger
    learning rate than students copied from the teacher (nothing of the teacher's function is
    there to preserve).
    Equation numbers are not cited: the paper text was not available offline; the maths follows the
    released code (``reflow/reflow.py``).
    """

    name: ClassVar[str] = "slimflow"
    data: ClassVar[str] = "trajectory"
    paper: ClassVar[str] = (
        "Zhu, Liu & Liu 2024, SlimFlow: training smaller one-step diffusion models with rectified flow (ECCV), "
        "arXiv:2407.12718"
    )

    width: float = 0.5  # student channels / teacher channels
    num_res_blocks: int | None = None  # None: the teacher's
    reflow_fraction: float = 0.6  # stage 1 (annealing reflow) share of the steps
    anneal_fraction: float = 0.6  # beta: 1 -> 0 over this share of stage 1 (paper 300k / 500k)
    guide_weight: float = 1.0  # released code: loss + loss_teacher
    guide_times: tuple[float, float] = (0.2, 0.8)  # s_m range of the guidance term

    def __post_init__(self):
        if not 0 < self.width <= 1:
            raise ValueError(f"width={self.width} must be in (0, 1]: the student is the smaller net")
        for f in ("reflow_fraction", "anneal_fraction"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"{f}={getattr(self, f)} must be in [0, 1]")
        lo, hi = self.guide_times
        if not 0 < lo <= hi < 1:
            raise ValueError(f"guide_times={self.guide_times} must satisfy 0 < lo <= hi < 1")
        object.__setattr__(self, "guide_times", (float(lo), float(hi)))

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        net = smaller_net(teacher.net, self.width, self.num_res_blocks)
        return StudentSpec(net=net, schedule=RectifiedFlow(), prediction="flow")

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        return rf_sampler(steps)

    def setup(self, module: DistillModule) -> None:
        module.add_target()  # the guide: the small 2-rectified flow, frozen at the stage switch

    def switch_step(self, module: DistillModule) -> int:
        return math.floor(self.reflow_fraction * module.total_iterations)

    def beta(self, module: DistillModule) -> float:
        """Annealing-reflow noise randomness beta(step): 1 -> 0 linearly (released code's 'warmup')."""
        n = self.anneal_fraction * self.switch_step(module)
        return 0.0 if n <= 0 else max(0.0, 1.0 - float(module.iteration) / n)

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        student, sched = module.student, module.student.schedule
        x0 = batch.traj[:, -1]
        z = noise_of(batch, module.teacher.schedule)
        b, switch = x0.shape[0], self.switch_step(module)
        step = int(module.iteration)
        if step < switch:
            # Stage 1: annealing reflow.
            beta = self.beta(module)
            z = math.sqrt(1.0 - beta * beta) * z + beta * randn(z.shape, generator, z)
            s = rf_times(sched, b, generator).to(x0.device)
            return mse(student(straight(x0, z, s), s, batch.cond, kind="flow"), z - x0)
        if step == switch:
            module.refresh_target()  # the guide is the stage-1 flow (checkpointed, so resumes keep it)
        # Stage 2: flow-guided distillation; one pass for the pair term and the guidance term.
        eps = randn(z.shape, generator, z)
        one = torch.full((2 * b,), sched.t_max, dtype=torch.float64, device=x0.device)
        cond2 = None if batch.cond is None else torch.cat([batch.cond, batch.cond])
        v = student(torch.cat([z, eps]), one, cond2, kind="flow")
        v_pair, v_eps = v[:b], v[b:]
        with torch.no_grad():
            lo, hi = self.guide_times
            s_m = rf_times(sched, b, generator, lo, hi).to(x0.device)
            x_m = eps - _bcast(1.0 - s_m, eps) * v_eps.detach()
            x0_g = x_m - _bcast(s_m, eps) * module.target(x_m, s_m, batch.cond, kind="flow")
        return mse(v_pair, z - x0) + self.guide_weight * mse(v_eps, eps - x0_g)


__all__ = [
    "Reflow",
    "SlimFlow",
    "fresh_copy",
    "noise_of",
    "rf_scale",
    "rf_time",
    "rf_times",
    "schedule_time",
    "smaller_net",
    "straight",
    "teacher_velocity",
]
