"""Progressive distillation (Salimans & Ho 2022) and guided distillation (Meng et al. 2023).

Progressive distillation (PD) halves a deterministic sampler's step count round after round: in
each round a student (initialised from its round's teacher) learns to take with ONE DDIM step what
its teacher takes with TWO, then becomes the next round's teacher. Guided distillation first
distils classifier-free guidance (two network passes per call) into one w-conditioned network,
then runs PD on that network with w as an input of both student and round teacher.

Round bookkeeping. A run of T iterations is cut into rounds of equal length computed from
``module.iteration``; the round teacher is ``module.target`` (a frozen copy of the student, refreshed
with :meth:`DistillModule.refresh_target` when a new round begins), and the index of the round the
target belongs to lives in the buffer ``module.pd_round``; both are checkpointed, so a resumed
run continues the round it stopped in. The first PD round's teacher is the real teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..card import SamplerRule
from ..denoiser import Denoiser, _bcast, to_x0_eps
from .base import DistillModule, Objective, StudentSpec, mse, randn, uniform_times
from ..updates import alpha_sigma, ddim_jump, ddim_x0, noise_to

PREDICTIONS = ("auto", None, "eps", "x0", "v", "flow")


# -- shared maths ------------------------------------------------------------------------------------
def truncated_snr(alpha: Tensor, sigma: Tensor) -> Tensor:
    """Truncated-SNR weight max(alpha^2 / sigma^2, 1) (Salimans & Ho 2022, Sec. 4): the x0 error
    weighted like max(||x - x_hat||^2, ||eps - eps_hat||^2)."""
    return (alpha**2 / sigma.clamp(min=1e-12) ** 2).clamp(min=1.0)


@torch.no_grad()
def guided_x0(teacher: Denoiser, x: Tensor, t: Tensor, cond: Tensor, w: Tensor) -> Tensor:
    """The teacher's classifier-free-guided x0 with a per-sample scale w (B,): two network passes
    (conditional and null label, batched), u + w (c - u) in the net's own parametrisation as
    :meth:`Denoiser.guided` does, then x0, clipped like the teacher's sampler clips it."""
    both = teacher.raw(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, teacher.null_cond(cond)]), 1.0)
    c, u = both.chunk(2)
    out = u + _bcast(w, x) * (c - u)
    a, s = alpha_sigma(teacher.schedule, t)
    x0 = to_x0_eps(out, teacher.prediction, x, a, s)[0]
    return x0 if teacher.clip_x0 is None else x0.clamp(-teacher.clip_x0, teacher.clip_x0)


def round_plan(steps: int, start_steps: int) -> list[int]:
    """The student's step count in each round: [K 2^(R-1), ..., 2K, K], the first round's teacher
    (the real one) taking K 2^R >= ``start_steps`` DDIM steps."""
    rounds = max(1, math.ceil(math.log2(max(start_steps, 2 * steps) / steps)))
    return [steps * 2 ** (rounds - 1 - r) for r in range(rounds)]


def _grid(schedule, n: int, device) -> Tensor:
    return torch.tensor(uniform_times(schedule, n), dtype=torch.float64, device=device)


# -- progressive distillation -------------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressiveDistillation(Objective):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2).

    Round r: the student takes N_r DDIM steps on the uniform grid ``uniform_times(N_r)`` (t_max ..
    then 0), its teacher 2 N_r on the grid that interleaves the midpoints. For data x, t = t_i of the
    student grid, t' the teacher's midpoint, t'' = t_{i+1}: z_t = alpha_t x + sigma_t eps, two teacher
    DDIM steps z_t -> z_t' -> z_t'', the x0 target x_tilde (:func:`fewstep.core.updates.ddim_x0`), and the loss
    max(SNR_t, 1) ||x_tilde - x_hat_student(z_t)||^2 (Sec. 4, truncated-SNR weighting).

    Defaults, scaled for a 600-iteration budget: the paper distils a 1024/8192-step teacher for
    50k iterations a round; here the first teacher takes ``start_steps`` = 16 DDIM steps (on the
    small teachers 16 uniform DDIM steps are already close to the converged solution) and the
    iterations are split evenly over the log2(16/K) rounds.

    ``prediction``: the student's parametrisation. Sec. 4: an eps-prediction model cannot make a
    one-step x0 prediction at t_max, where x0 = (z - sigma eps) / alpha and alpha -> 0, so the
    paper switches to v. "auto" (default) is every objective's rule (Objective.student_prediction:
    v for an eps teacher, its net's output converted so the copied weights keep the teacher's
    function; card.Reparam); a name forces one.
    """

    name: ClassVar[str] = "pd"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = "Salimans & Ho 2022, Progressive distillation for fast sampling of diffusion models (ICLR)"

    start_steps: int = 16  # DDIM steps of the first round's teacher (the real teacher)
    prediction: str | None = "auto"  # the student's parametrisation ("auto": the objective default, v for eps teachers)

    def __post_init__(self):
        if self.start_steps < 2:
            raise ValueError(f"start_steps={self.start_steps}: the first teacher needs at least 2 steps")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction={self.prediction!r}; use one of {PREDICTIONS}")

    # -- contract -----------------------------------------------------------------------------------
    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec(prediction=None if self.prediction == "auto" else self.prediction)

    def setup(self, module: DistillModule) -> None:
        module.add_target()  # the round teacher; its weights are replaced when a round begins
        module.register_buffer("pd_round", torch.zeros((), dtype=torch.long))

    def sampler(self, teacher: Denoiser, steps: int) -> SamplerRule:
        """Deterministic DDIM on the K-step uniform grid the last round trained (ending at 0)."""
        return SamplerRule("ddim", uniform_times(teacher.schedule, steps))

    # -- rounds -------------------------------------------------------------------------------------
    def _stage(self, module: DistillModule) -> tuple[int, int]:
        """(phase, first iteration of PD): phase 0 is the first PD round (teacher = the real one)."""
        return 0, 0

    def round_of(self, module: DistillModule) -> tuple[int, int]:
        """(round index r, student steps N_r) for the current ``module.iteration``."""
        plan = round_plan(module.student.card.student_steps or 1, self.start_steps)
        _, start = self._stage(module)
        frac = (float(module.iteration) - start) / max(1, module.total_iterations - start)
        r = min(len(plan) - 1, max(0, int(frac * len(plan))))
        return r, plan[r]

    @staticmethod
    def enter_phase(module: DistillModule, phase: int) -> None:
        """At the first iteration of a new phase, the round teacher becomes a copy of the student."""
        if phase > int(module.pd_round):
            module.refresh_target()
            module.pd_round.fill_(phase)

    # -- loss ---------------------------------------------------------------------------------------
    def pd_loss(self, module: DistillModule, x0: Tensor, cond: Tensor | None, n: int, real_teacher: bool,
                generator: torch.Generator, w: Tensor | None = None) -> Tensor:
        """One PD term: student with n steps, round teacher with 2n; ``w`` (B,) feeds guided nets."""
        sched, dev, b = module.student.schedule, x0.device, x0.shape[0]
        i = torch.randint(0, n, (b,), generator=generator).to(dev)
        fine = _grid(sched, 2 * n, dev)  # (2n+1,) the teacher's grid; even entries are the student's
        t, t1, t2 = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]
        eps = randn(x0.shape, generator, x0)
        z_t = noise_to(sched, x0, t, eps)
        target = None if real_teacher else module.target.eval()  # eval: no dropout, x0 clipped as when sampling

        def teach(z: Tensor, tt: Tensor) -> Tensor:
            return module.teacher_x0(z, tt, cond) if target is None else target(z, tt, cond, w)

        with torch.no_grad():
            # 2 steps of DDIM with the teacher.
            z_t1 = ddim_jump(sched, z_t, teach(z_t, t), t, t1)
            z_t2 = ddim_jump(sched, z_t1, teach(z_t1, t1), t1, t2)
            x_tilde = ddim_x0(sched, z_t, t, z_t2, t2)  # Alg. 2's x_tilde
        x_hat = module.student(z_t, t, cond, w)
        a, s = alpha_sigma(sched, t)
        return truncated_snr(a, s).float() * mse(x_hat, x_tilde)

    def loss(self, module: DistillModule, batch, generator: torch.Generator) -> Tensor:
        r, n = self.round_of(module)
        self.enter_phase(module, r)
        return self.pd_loss(module, batch.x0, batch.cond, n, r == 0, generator)


# -- guided distillation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuidedProgressiveDistillation(ProgressiveDistillation):
    """Guided distillation (Meng et al. 2023, "On distillation of guided diffusion models", Sec. 3).

    Stage one: a w-conditioned student x_hat(z_t, w) (the UNet with its zero-initialised
    guidance embedding, so it starts as the teacher) matches the teacher's classifier-free-guided
    x0, x_hat_w = u + w (c - u) (two passes), for w ~ U[w_min, w_max] and t ~ U[t_min, t_max] on
    real data, with the truncated-SNR weight. Stage two: progressive distillation of
    that model down to K steps, w sampled the same way and fed to student and round teacher alike.
    The sampled model takes w in one pass: ``sample(student, x, guidance=w)`` costs one net call a step.

    w follows fewstep's convention (1 = no guidance; the paper's w is ours minus 1): the paper's
    [0, 4] for ImageNet 64 becomes w in [1, 5]; the default [1, 4] covers the scales used with the
    small teachers. Budget: ``stage1_share`` = 0.3 of the iterations for stage 1 (one teacher call
    per sample, quick to fit from the teacher's init), the rest split evenly over the PD rounds
    (16 -> K steps; ``stage1_share`` = 1 runs stage 1 only).
    """

    name: ClassVar[str] = "guided-pd"
    paper: ClassVar[str] = "Meng et al. 2023, On distillation of guided diffusion models (CVPR)"

    w_min: float = 1.0
    w_max: float = 4.0
    w_sample: float | None = None  # the scale the student samples at unless told (None: the range's middle)
    stage1_share: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= w_min <= w_max, got [{self.w_min}, {self.w_max}]")
        if self.w_sample is not None and not self.w_min <= self.w_sample <= self.w_max:
            raise ValueError(f"w_sample={self.w_sample} must lie in the trained range [{self.w_min}, {self.w_max}]")
        if not 0 < self.stage1_share <= 1:
            raise ValueError(f"stage1_share={self.stage1_share} must be in (0, 1]")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec(prediction=None if self.prediction == "auto" else self.prediction, guidance_embed=True)

    def trained_guidance(self) -> tuple[float, float, float]:
        w = (self.w_min + self.w_max) / 2 if self.w_sample is None else self.w_sample
        return (self.w_min, self.w_max, w)

    def _stage(self, module: DistillModule) -> tuple[int, int]:
        start = round(self.stage1_share * module.total_iterations)
        return (0 if int(module.iteration) < start else 1), start

    def sample_w(self, b: int, generator: torch.Generator, like: Tensor) -> Tensor:
        w = self.w_min + (self.w_max - self.w_min) * torch.rand(b, generator=generator, dtype=torch.float64)
        return w.to(like.device, torch.float32)

    def stage1_loss(self, module: DistillModule, x0: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
        """Meng et al. 2023, stage one: omega(lambda_t) ||x_hat(z_t, w) - x_hat_w^teacher(z_t)||^2."""
        sched, b = module.student.schedule, x0.shape[0]
        w = self.sample_w(b, generator, x0)
        u = torch.rand(b, generator=generator, dtype=torch.float64).to(x0.device)
        t = sched.t_min + (sched.t_max - sched.t_min) * u
        z_t = noise_to(sched, x0, t, randn(x0.shape, generator, x0))
        target = guided_x0(module.teacher, z_t, t, cond, w)
        x_hat = module.student(z_t, t, cond, w)
        a, s = alpha_sigma(sched, t)
        return truncated_snr(a, s).float() * mse(x_hat, target)

    def loss(self, module: DistillModule, batch, generator: torch.Generator) -> Tensor:
        if batch.cond is None or not module.teacher.num_classes:
            raise ValueError("guided distillation needs a class-conditional teacher and labels (CFG has nothing to guide)")
        if not module.student.guidance_embedded:
            raise ValueError("guided distillation needs a student net with a guidance input (StudentSpec(guidance_embed=True))")
        stage, _ = self._stage(module)
        if stage == 0:
            return self.stage1_loss(module, batch.x0, batch.cond, generator)
        r, n = self.round_of(module)
        self.enter_phase(module, 1 + r)  # round 0 of stage 2: the teacher is the stage-1 student
        w = self.sample_w(batch.x0.shape[0], generator, batch.x0)
        return self.pd_loss(module, batch.x0, batch.cond, n, False, generator, w)


__all__ = [
    "GuidedProgressiveDistillation",
    "ProgressiveDistillation",
    "guided_x0",
    "round_plan",
    "truncated_snr",
]
