"""TDM: distribution matching at every step of a few-step student's trajectory.

Luo et al. 2025, "Learning Few-Step Diffusion Models by Trajectory Distribution Matching"
(Luo-Yihong/TDM). A K-step student runs DDIM through its grid t_K = t_max > t_{K-1} > ... > t_0 = 0:
at step k it predicts x0_k = G(x_{t_k}, t_k) and moves to x_{t_{k-1}} = DDIM(x_{t_k}, x0_k). The next
state only needs the right marginal at t_{k-1} and above, so TDM matches each step's prediction to
the teacher's marginal only on that step's noise interval (our reading of the "sampling-steps-aware"
objective; the interval bounds are the step's own grid times):

    grad_k = E_{t ~ U[t_{k-1}, t_k], eps} [ x0_fake(x_t, t) - x0_real(x_t, t) ],  x_t = alpha_t x0_k + sigma_t eps

(the reverse-KL distribution-matching gradient of DMD, Yin et al. 2024, Eq. 7-8, restricted to
interval k; ``critic.dmd_direction`` with its per-sample normalisation). The fake score is trained
by denoising on the detached x0_k at times drawn from the SAME interval k, so at a time t in
interval k it models the distribution of step k's predictions: the interval is its step
conditioning (the intervals are disjoint, so one network serves every step).

Gradients: each step's DM term trains the student at that step only; the state passed on is
detached (as DMD2's backward simulation), so memory is one student pass per step.
Simplified against the paper: no CFG-augmented target schedule, no LoRA, one fixed K per run, and the
student's grid is uniform in t (``uniform_times``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..card import SamplerRule
from ..denoiser import Denoiser
from ..parts import STUDENT, Part
from .base import Batch, DistillModule, Objective, uniform_times
from .critic import dmd_direction, dmd_loss, fake_score_loss, make_fake_score
from .rollout import next_state, param_like, pure_noise


def step_interval(schedule, grid: list[float], k: int) -> tuple[float, float]:
    """Noise interval [lo, hi] of step k of a grid (k = 0 is the first step, from grid[0] = t_max):
    [grid[k+1], grid[k]], with the clean end 0 raised to the schedule's t_min."""
    return max(float(grid[k + 1]), float(schedule.t_min)), float(grid[k])


def interval_times(schedule, grid: list[float], k: int, n: int, generator: torch.Generator, device=None) -> Tensor:
    """n times uniform in step k's interval (float64)."""
    lo, hi = step_interval(schedule, grid, k)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(device)


@dataclass(frozen=True)
class TDM(Objective):
    """TDM (Luo et al. 2025): a K-step DDIM student whose every step's x0 prediction matches the
    teacher's marginal on that step's noise interval, with an interval-aware fake score (module doc).

    ``dm_weight`` scales the student's DM terms (one per step, summed); ``critic_lr_scale`` is the
    fake score's learning-rate multiple (two time-scale updates).
    """

    name: ClassVar[str] = "tdm"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = (
        "Luo et al. 2025, Learning Few-Step Diffusion Models by Trajectory Distribution Matching, arXiv:2503.06674"
    )

    dm_weight: float = 1.0
    critic_lr_scale: float = 1.0

    def __post_init__(self):
        if self.dm_weight <= 0 or self.critic_lr_scale <= 0:
            raise ValueError(f"dm_weight={self.dm_weight} and critic_lr_scale={self.critic_lr_scale} must be > 0")

    def setup(self, module: DistillModule) -> None:
        module.critic = make_fake_score(module.teacher).requires_grad_(True)  # trainable even for foreign nets

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """K DDIM steps through the student's own grid, the last one to t = 0 (its x0)."""
        return SamplerRule("ddim", uniform_times(teacher.schedule, steps))

    def grid(self, module: DistillModule) -> list[float]:
        return list(module.student.card.sampler.grid)

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, list[Tensor]]:
        """Per step k: "dm" (trains the student at step k) and "critic" (trains the fake score on
        interval k), each (B,)."""
        student, sched, cond = module.student, module.student.schedule, batch.cond
        grid = self.grid(module)
        n = batch.size
        x, _ = pure_noise(student, (n, *module.teacher.sample_shape), generator, param_like(student), grid[0])
        out: dict[str, list[Tensor]] = {"dm": [], "critic": []}
        for k in range(len(grid) - 1):
            t_k = torch.full((n,), grid[k], dtype=torch.float64, device=x.device)
            x0_k = student(x, t_k, cond)
            t = interval_times(sched, grid, k, n, generator, x.device)
            direction = dmd_direction(module.teacher, module.critic, x0_k, cond, generator, module.teacher_guidance, t)
            out["dm"].append(self.dm_weight * dmd_loss(x0_k, direction))
            t_fake = interval_times(sched, grid, k, n, generator, x.device)
            out["critic"].append(fake_score_loss(module.critic, x0_k, cond, generator, t=t_fake))
            # DDIM to the next grid time (Song et al. 2021, Eq. 12), the state detached.
            s = torch.full_like(t_k, grid[k + 1])
            x = next_state(sched, x.detach(), x0_k.detach(), t_k, s, generator, rule="ddim")
        return out

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        terms = self.terms(module, batch, generator)
        return sum(terms["dm"]) + sum(terms["critic"])


__all__ = ["TDM", "interval_times", "step_interval"]
