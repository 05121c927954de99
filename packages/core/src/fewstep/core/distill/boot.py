"""BOOT: data-free distillation by bootstrapping (Gu et al. 2023).

The student g(eps, t) reads only the initial noise and a time, and predicts the "signal" of the
teacher's sampling trajectory at t, y_t = (x_t - sigma_t eps) / alpha_t (Sec. 3.1). y follows the
Signal-ODE dy/dlambda = y - f(x_t, t) with lambda = log(sigma / alpha) and f the teacher's x0
(Sec. 3.1); one exact DDIM step of the teacher from t to s < t reads, in y,

    y_s = y_t + delta (f(x_t, t) - y_t),   delta = 1 - (sigma_s alpha_t) / (alpha_s sigma_t),

(the exponential-integrator form of the paper's Euler step lambda_t - lambda_s; both agree to first
order, and this one makes the fixed point exactly the teacher's DDIM trajectory). Bootstrapping
(Sec. 3.2): the target for g(eps, s) is built from the student's own g(eps, t) under stop-gradient,
with the teacher evaluated at the student's x_t = alpha_t g(eps, t) + sigma_t eps:

    L_BS = 1/delta^2 || g(eps, s) - SG[ g(eps, t) + delta (f(x_t, t) - g(eps, t)) ] ||^2,

the 1/delta^2 weight making it a finite-difference match of the Signal-ODE's derivative. The
boundary condition at t_max (Sec. 3.2), where x_T is the noise itself and y_T is ill-posed
(alpha_T ~ 0), is g(eps, T) = f(x_T, T): L_BC = || g(eps, T) - f(x_T, T) ||^2. Loss L_BS + beta L_BC.
No data is read (data="none"): only noise and labels; the teacher's guidance is the run's
``teacher_guidance``.

Choices here (documented, not from the paper): (t, s) are consecutive times of a uniform grid with
``grid_steps`` intervals ending at 0 (the student's time for the last node, 0, is t_min), so the
student learns the teacher's ``grid_steps``-step DDIM solution; the student network outputs y
directly (prediction "x0": a copied eps/v teacher head starts off-target and is re-learnt, which
costs iterations); beta = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..card import SamplerRule
from ..denoiser import Denoiser, _bcast
from .base import DistillModule, Objective, StudentSpec, mse, randn, uniform_times
from ..updates import alpha_sigma


@dataclass(frozen=True)
class BOOT(Objective):
    """BOOT (Gu et al. 2023, Sec. 3): a time-conditioned one-step student trained without data.

    Defaults scaled for small models and a 600-iteration budget: the bootstrapping grid has
    ``grid_steps`` = 16 uniform intervals (a 16-step DDIM teacher solution is close to converged
    on the small teachers, and fewer hops carry the boundary information faster), beta = 1. The
    student's input is always pure noise, so a copied teacher is a weak init (its net was trained
    on noisy data, not on noise alone): give it more iterations or a larger learning rate than the
    trajectory-copying objectives (figures: docs/benchmarks/distill_trajectory.md).
    """

    name: ClassVar[str] = "boot"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = "Gu et al. 2023, BOOT: data-free distillation of denoising diffusion models with bootstrapping"

    grid_steps: int = 16  # intervals of the teacher DDIM grid the student learns
    boundary_weight: float = 1.0  # beta on the boundary loss at t_max

    def __post_init__(self):
        if self.grid_steps < 1:
            raise ValueError(f"grid_steps={self.grid_steps} must be >= 1")
        if self.boundary_weight < 0:
            raise ValueError("boundary_weight must be >= 0")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec(prediction="x0", keep_function=False)  # the net outputs the signal y_t itself

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """One evaluation g(eps, t_min) from noise at t_max (``sample_boot``), whatever K: the student
        maps noise to one point of the trajectory and cannot re-enter it from a later state."""
        return SamplerRule("boot", [float(teacher.schedule.t_max), 0.0])

    def times(self, schedule, device) -> tuple[Tensor, Tensor]:
        """(grid, student times): the uniform grid t_max .. 0 and the same with its final 0 -> t_min."""
        grid = torch.tensor(uniform_times(schedule, self.grid_steps), dtype=torch.float64, device=device)
        label = grid.clone()
        label[-1] = schedule.t_min
        return grid, label

    def loss(self, module: DistillModule, batch, generator: torch.Generator) -> Tensor:
        student, sched = module.student, module.student.schedule
        cond = batch.cond
        b = batch.size
        like = torch.zeros((), device=module.iteration.device)  # float32 on the module's device
        eps = randn((b, *module.teacher.sample_shape), generator, like)  # (B, ...) unit noise
        grid, label = self.times(sched, like.device)
        t_max = grid[:1].expand(b)
        x_T = _bcast(sched.sigma(t_max), eps) * eps  # the scaled noise every sampler starts from
        i = torch.randint(0, self.grid_steps, (b,), generator=generator).to(like.device)
        t, s = grid[i], grid[i + 1]
        a_t, s_t = alpha_sigma(sched, t)
        a_s, s_s = alpha_sigma(sched, s)
        delta = 1.0 - (s_s * a_t) / (a_s * s_t)  # (B,) in (0, 1]; 1 into t = 0

        # Bootstrapped target: the student's y_t, the teacher at the student's x_t, one DDIM step in y.
        with torch.no_grad():
            y_t = student(x_T, label[i], cond)
            x_t = _bcast(a_t, eps) * y_t + _bcast(s_t, eps) * eps
            f_t = module.teacher_x0(x_t, t, cond)
            target = y_t + _bcast(delta, eps) * (f_t - y_t)
            f_T = module.teacher_x0(x_T, t_max, cond)  # boundary: y at t_max is the teacher's x0
        # Both student evaluations with gradient in one batched pass: y_s and y_T.
        both = student(torch.cat([x_T, x_T]), torch.cat([label[i + 1], t_max]), None if cond is None else torch.cat([cond, cond]))
        y_s, y_T = both.chunk(2)
        l_bs = mse(y_s, target) / delta.float() ** 2
        l_bc = mse(y_T, f_T)
        return l_bs + self.boundary_weight * l_bc


__all__ = ["BOOT"]
