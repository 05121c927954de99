"""Distribution matching distillation: DMD and DMD2.

DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation"): a one-step
generator G, initialised from the teacher, minimises the reverse KL between its distribution and the
teacher's, both diffused to time t. Its gradient (Eq. 7) is E_{z,t,eps}[w_t alpha_t (s_fake(x_t) -
s_real(x_t)) dG/dtheta] with x_t = alpha_t G(z) + sigma_t eps; with s = (alpha x0 - x_t) / sigma^2 and
DMD's weight w_t = sigma_t^2 / alpha_t * CS / ||x0_real - x||_1 (Eq. 8) this is the normalised
difference of the fake and real x0 predictions (``critic.dmd_direction``). The fake score is trained
by denoising on the generator's (detached) samples; the real score is the frozen teacher. A
regression loss on teacher noise -> sample pairs (Eq. 9) keeps the generator from collapsing.

DMD2 (Yin et al. 2024b, "Improved Distribution Matching Distillation for Fast Image Synthesis"):
no regression loss; a two time-scale update rule (the fake score moves on every iteration, the
generator on every ``critic_updates``-th, Sec. 4.2; a declared update ratio, ``parts.py``); a GAN head on the fake score's bottleneck, trained
non-saturating on real data against generated samples noised to the same t (Sec. 4.3,
``critic.FakeScoreGAN``); and K-step students on a fixed grid trained with backward simulation:
the training input at step k comes from the student's own K-step sampling from noise (Sec. 4.5,
``rollout.backward_simulation``), so training sees what inference sees.

Generator and fake score are separate parts (``parts()``): each has its own AdamW, learning rate
and gradient clip, and both step after the one backward of an iteration. The DM and generator-GAN
terms reach the generator only, the denoising and discriminator terms the fake score (and head)
only (``dmd_direction`` is a stop-gradient target, samples are detached for the critic,
``gan.gan_losses`` freezes the discriminator for the generator term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..parts import STUDENT, Part
from ..updates import noise_to
from .base import Batch, DistillModule, Objective, mse, pseudo_huber, randn
from .critic import FakeScoreGAN, dmd_direction, dmd_loss, fake_score_for, fake_score_loss, sample_times
from .gan import gan_losses
from .rollout import backward_simulation, draw_steps, pure_noise

DISTANCES = {"mse": mse, "pseudo_huber": pseudo_huber}


def _check_times(t_lo: float, t_hi: float) -> None:
    if not 0 <= t_lo < t_hi <= 1:
        raise ValueError(f"need 0 <= t_lo < t_hi <= 1 (fractions of the schedule's range), got {t_lo}, {t_hi}")


def fake_score(module: DistillModule) -> Denoiser:
    """The fake-score Denoiser of a module whose critic is a Denoiser or a :class:`FakeScoreGAN`."""
    c = module.critic
    return c.fake if isinstance(c, FakeScoreGAN) else c


def dm_term(
    module: DistillModule, x: Tensor, cond: Tensor | None, generator: torch.Generator, t_lo: float, t_hi: float
) -> Tensor:
    """DMD's distribution-matching loss (Eq. 7-8) per sample (``critic.dmd_loss``: its gradient
    w.r.t. x is the normalised direction / D)."""
    t = sample_times(module.teacher.schedule, x.shape[0], generator, t_lo, t_hi, x.device)
    direction = dmd_direction(module.teacher, fake_score(module), x, cond, generator, module.teacher_guidance, t)
    return dmd_loss(x, direction)


# -- DMD ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DMD(Objective):
    """DMD (Yin et al. 2024): one-step generator, loss = DM term (Eq. 7-8) on fresh one-step samples
    + ``reg_weight`` * regression (Eq. 9) on the teacher's noise -> ODE-sample pairs (data =
    "trajectory": ``traj[:, 0]`` is the scaled noise, ``x0`` the teacher's sample) + the fake score's
    denoising loss on the detached samples (``module.critic``, a copy of the teacher).

    Against the paper: the regression distance is mse or pseudo-Huber, not LPIPS (no offline
    feature net); the pairs are the runner's cached teacher trajectories (DMD: 25 steps of PNDM/Heun);
    generator and fake score step in the same iteration, after one backward (DMD alternates them).
    """

    name: ClassVar[str] = "dmd"
    data: ClassVar[str] = "trajectory"
    paper: ClassVar[str] = "Yin et al. 2024, One-step Diffusion with Distribution Matching Distillation"

    reg_weight: float = 0.25  # lambda_reg (the paper's, with LPIPS)
    distance: str = "mse"  # regression distance: "mse" or "pseudo_huber"
    t_lo: float = 0.02  # DMD's T_min / T_max for the DM term, as fractions of [t_min, t_max]
    t_hi: float = 0.98
    critic_lr_scale: float = 1.0  # learning-rate multiple of the fake score

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ValueError(f"distance={self.distance!r}: use one of {sorted(DISTANCES)}")
        if self.reg_weight < 0 or self.critic_lr_scale <= 0:
            raise ValueError("need reg_weight >= 0 and critic_lr_scale > 0")
        _check_times(self.t_lo, self.t_hi)

    def setup(self, module: DistillModule) -> None:
        if (module.student.card.student_steps or 1) != 1:
            raise ValueError(
                f"DMD trains a one-step generator; got steps={module.student.card.student_steps}. "
                "Use DistillConfig(steps=1), or dmd2 for K-step students (backward simulation)"
            )
        module.critic = fake_score_for(module.teacher, module.student)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parts: "dm" and "reg" train the generator, "critic" the fake score."""
        if batch.traj is None or batch.x0 is None:
            raise ValueError("DMD trains on teacher noise -> sample pairs (data='trajectory'): the batch has no traj")
        student, cond = module.student, batch.cond
        # Regression on the teacher's pairs (Eq. 9): G(z) ~ the teacher's ODE sample from z.
        z, t_z = batch.traj[:, 0], batch.traj_t[:, 0].to(torch.float64)
        reg = DISTANCES[self.distance](student(z, t_z, cond), batch.x0)
        # Distribution matching on fresh one-step samples (Eq. 7-8).
        noise, t_max = pure_noise(student, batch.x0.shape, generator, batch.x0)
        x = student(noise, t_max, cond)
        dm = dm_term(module, x, cond, generator, self.t_lo, self.t_hi)
        critic = fake_score_loss(module.critic, x, cond, generator)  # detaches x
        return {"dm": dm, "reg": self.reg_weight * reg, "critic": critic}

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.terms(module, batch, generator).values())


# -- DMD2 -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DMD2(Objective):
    """DMD2 (Yin et al. 2024b): DM term + GAN, no regression; real data (data = "real").

    Per iteration: k ~ U{0..K-1} per sample on the student's grid (uniform, [t_max, ..., 0]); x_k from the
    student's own rollout (``rollout.backward_simulation``, DMD2 Sec. 4.5; x_0 = pure noise);
    x = G(x_k, t_k), the only call with gradient. The fake score (``module.critic``, a
    :class:`~fewstep.core.distill.critic.FakeScoreGAN`: teacher copy + head on its bottleneck) always trains: denoising on sg(x) + ``disc_weight`` * the head's
    non-saturating loss on real x0 vs sg(x), both noised to the same t ~ U[t_lo, t_hi]. The generator
    trains on every ``critic_updates``-th iteration only (two time-scale rule, declared as the
    critic's ``updates_per_student_update``; ``module.updates("student")`` says when): DM term +
    ``gan_weight`` * the GAN generator loss; on the other iterations its terms are not computed and
    its optimiser does not step, so it stays exactly as it is. The defaults are DMD2's ImageNet-64 ones
    (update ratio 5, generator GAN weight 3e-3, classifier weight 1e-2).

    Against the paper: on a generator iteration both optimisers step after one backward (DMD2 steps
    them in sequence, each after its own forward); the head is a conv + pool + linear on the UNet's last middle block (DMD2: a
    conv stack on its encoder output); real and fake are noised to one shared t per row.
    """

    name: ClassVar[str] = "dmd2"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = "Yin et al. 2024b, Improved Distribution Matching Distillation for Fast Image Synthesis"

    critic_updates: int = 5  # fake-score updates per generator update (DMD2's dfake_gen_update_ratio)
    critic_lr_scale: float = 1.0
    gan_weight: float = 3e-3  # generator's GAN loss weight (0: no GAN head at all)
    disc_weight: float = 1e-2  # the head's (and fake score's) classification loss weight
    head_width: int = 64
    t_lo: float = 0.02
    t_hi: float = 0.98

    def __post_init__(self):
        if self.critic_updates < 1:
            raise ValueError(f"critic_updates={self.critic_updates}: need >= 1 (1 = generator every iteration)")
        if self.critic_lr_scale <= 0 or self.gan_weight < 0 or self.disc_weight < 0 or self.head_width < 1:
            raise ValueError("need critic_lr_scale > 0, gan_weight >= 0, disc_weight >= 0 and head_width >= 1")
        _check_times(self.t_lo, self.t_hi)

    @property
    def gan(self) -> bool:
        return self.gan_weight > 0

    def setup(self, module: DistillModule) -> None:
        fake = fake_score_for(module.teacher, module.student)
        module.critic = FakeScoreGAN(fake, self.head_width) if self.gan else fake

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        # The critic part holds the GAN head too (a FakeScoreGAN): one optimiser, one clip.
        critic = Part("critic", lr_scale=self.critic_lr_scale, updates_per_student_update=self.critic_updates)
        return (Part(STUDENT), critic)

    def generator_step(self, module: DistillModule) -> bool:
        """Whether this iteration trains the generator (iterations 0, r, 2r, ... of r = ``critic_updates``)."""
        return module.updates(STUDENT)

    def grid(self, student: Denoiser) -> Tensor:
        """The student's K+1 sampling times [t_0 = t_max, ..., t_{K-1}, 0] (its card's grid)."""
        grid = (student.card.sampler.grid if student.card.sampler else None)
        if not isinstance(grid, (list, tuple)):
            raise TypeError(f"DMD2 needs a student whose sampler has an explicit list of grid times, got {grid!r}")
        return torch.tensor(grid, dtype=torch.float64)

    def inputs(
        self, module: DistillModule, like: Tensor, cond: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x_k, t_k, k): the generator's training inputs by backward simulation, k ~ U{0..K-1}."""
        student = module.student
        grid = self.grid(student).to(like.device)
        k = draw_steps(len(grid) - 1, generator, like.shape[0])  # one step per row
        z, _ = pure_noise(student, like.shape, generator, like)
        x_k, t_k = backward_simulation(student, z, k, grid, cond, generator)
        return x_k, t_k, k

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parts: "dm" and "gan_g" train the generator (zero on critic-only iterations), "critic"
        and "gan_d" the fake score and its head."""
        if batch.x0 is None:
            raise ValueError("DMD2 trains on real data (data='real'): the batch has no x0")
        x0, cond = batch.x0, batch.cond
        gen_step = self.generator_step(module)
        x_k, t_k, _ = self.inputs(module, x0, cond, generator)
        with torch.set_grad_enabled(gen_step and torch.is_grad_enabled()):
            x = module.student(x_k, t_k, cond)
        zero = torch.zeros(x0.shape[0], device=x0.device)
        out = {
            "critic": fake_score_loss(fake_score(module), x, cond, generator),
            "dm": zero,
            "gan_g": zero,
            "gan_d": zero,
        }
        if self.gan:
            # Real data and generated samples noised to one t per row (Sec. 4.3).
            sched = module.teacher.schedule
            t = sample_times(sched, x0.shape[0], generator, self.t_lo, self.t_hi, x0.device)
            fake_t = noise_to(sched, x, t, randn(x.shape, generator, x))
            real_t = noise_to(sched, x0, t, randn(x0.shape, generator, x0))
            g, d = gan_losses(module.critic, fake_t, real_t, t, cond)
            out["gan_d"] = self.disc_weight * d
            if gen_step:
                out["gan_g"] = self.gan_weight * g
        if gen_step:
            out["dm"] = dm_term(module, x, cond, generator, self.t_lo, self.t_hi)
        return out

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.terms(module, batch, generator).values())


__all__ = ["DMD", "DMD2", "backward_simulation", "dm_term", "fake_score", "pure_noise"]
