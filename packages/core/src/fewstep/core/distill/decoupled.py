"""Decoupled DMD and Flash-DMD: the distribution-matching gradient taken apart, each part given its
own noise levels and weight.

DMD (Yin et al. 2024, Eq. 7-8) moves a generated sample x along -(x0_fake(x_tau) - x0_real(x_tau))
with x_tau = alpha x + sigma eps, up to a positive per-sample weight. With classifier-free guidance
in the real score, x0_real = x0_uncond + w (x0_cond - x0_uncond), the gradient splits exactly
(Decoupled DMD, Liu et al. 2025, Sec. 3: grad L_DMD = grad L_DM + (w - 1) grad L_CA):

    x0_fake - x0_real  =  (x0_fake - x0_cond)  -  (w - 1) (x0_cond - x0_uncond)
                             DM (regulariser)         CA (CFG augmentation)

CA pushes x along the teacher's guidance direction (the "spear", what distils guided quality into
the student); DM matches the student's distribution to the unguided conditional teacher (the
"shield" against collapse and artifacts). ``DecoupledDMD`` draws each term's noise level tau from
its own distribution and weights each on its own; ``FlashDMD`` (Chen et al. 2025) splits the noise
levels between DM (high noise) and a pixel-space GAN against real data (low noise), and adds a
reward maximised jointly with the distillation.

Both train a fake score (``module.critic``, a teacher copy) by denoising on the detached student
samples in the same optimiser step (``critic.fake_score_loss``), and generate their training
samples by DMD2's backward simulation (Yin et al. 2024b, multi-step generator): a K-step student runs
k = step % K + 1 of its own consistency steps from noise, the gradient through the last one only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..parts import STUDENT, Part
from ..updates import noise_to
from .base import Batch, DistillModule, Objective, randn
from .critic import dmd_loss, dmd_normaliser, fake_score_loss, make_fake_score, sample_times
from .gan import Discriminator, gan_losses
from .rewards import module_reward, reward_values
from .rollout import student_samples, student_times

TERMS = ("ca", "dm")


# -- noise levels ---------------------------------------------------------------------------------
def time_shift(u: Tensor, shift: float) -> Tensor:
    """u in [0, 1] -> s u / (1 + (s - 1) u): s > 1 moves mass to high noise (SD3's timestep shift,
    Esser et al. 2024, Sec. 5.3.2, with u the fraction of the way from clean to noise); s = 1: identity."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def shifted_times(
    schedule, n: int, generator: torch.Generator, lo: float, hi: float, shift: float, device=None
) -> Tensor:
    """t = t_min + (t_max - t_min) time_shift(u), u ~ U[lo, hi] (B,) float64."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return (schedule.t_min + (schedule.t_max - schedule.t_min) * time_shift(u, shift)).to(device)


def _frac_to_t(schedule, f: float) -> float:
    return schedule.t_min + (schedule.t_max - schedule.t_min) * f


# -- the student's own samples ---------------------------------------------------------------------
def backward_simulate(
    module: DistillModule, n: int, cond: Tensor | None, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(x0, t): the student's samples after k = step % K + 1 of its consistency steps from pure noise
    (DMD2's backward simulation, Yin et al. 2024b, Sec. 4.5; ``rollout.student_samples``), the
    gradient through the last call only, and the time t (B,) of that last call. The trained step
    cycles with ``module.iteration`` (no random draw for it). A 1-step student is x0 = G(sigma_max z, t_max)
    with t = t_max."""
    k = int(module.iteration) % len(student_times(module.student))
    return student_samples(module, n, cond, generator, k=k)


# -- the two directions ----------------------------------------------------------------------------
def _weight(x: Tensor, x0_real: Tensor, normalize: bool) -> Tensor:
    """DMD's per-sample normaliser (``critic.dmd_normaliser``), or 1 with ``normalize`` off."""
    if not normalize:
        return torch.ones(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype)
    return dmd_normaliser(x, x0_real)


@torch.no_grad()
def cond_uncond_x0(real: Denoiser, x_t: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
    """(x0_cond, x0_uncond) of the real score at x_t, in one batched pass (null label for uncond)."""
    both = real(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, real.null_cond(cond)]), 1.0)
    return both.chunk(2)


@torch.no_grad()
def ca_direction(
    real: Denoiser, x: Tensor, x_t: Tensor, t: Tensor, cond: Tensor, guidance: float, normalize: bool = True
) -> Tensor:
    """CFG augmentation as a DMD-style gradient: -(w - 1)(x0_cond - x0_uncond)(x_t) / weight, so that
    x moves along +(w - 1)(x0_cond - x0_uncond), the teacher's guidance direction (Decoupled DMD, Sec. 3)."""
    x0_c, x0_u = cond_uncond_x0(real, x_t, t, cond)
    return -(guidance - 1.0) * (x0_c - x0_u) / _weight(x, x0_c, normalize)


@torch.no_grad()
def dm_direction(
    real: Denoiser,
    fake: Denoiser,
    x: Tensor,
    x_t: Tensor,
    t: Tensor,
    cond: Tensor | None,
    guidance: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """Distribution matching (x0_fake - x0_real)(x_t) / weight with the real score at ``guidance``
    (1: Decoupled DMD's DM term, unguided; w: the full DMD gradient, DM + CA). Zero when fake == real
    at guidance 1."""
    was = fake.training
    fake.eval()  # the fake score is evaluated as the real one is (eval mode, same x0 clipping)
    x0_fake = fake(x_t, t, cond)
    fake.train(was)
    x0_real = real(x_t, t, cond, guidance)
    return (x0_fake - x0_real) / _weight(x, x0_real, normalize)


# -- Decoupled DMD ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoupledDMD(Objective):
    """Decoupled DMD (Liu et al. 2025, "Decoupled DMD: CFG augmentation as the spear, distribution
    matching as the shield", Tongyi-MAI/Z-Image): the guided DMD gradient split into its CA and DM
    terms (Sec. 3), each with its own noise-level distribution and weight.

    Per step: the student generates x (backward simulation); CA re-noises x to tau_CA (u uniform in
    ``ca_t`` of [t_min, t_max], then time-shifted by ``ca_shift``; default 3: mostly high noise, where
    guidance decides class and layout) and follows the teacher's guidance direction at real-teacher
    scale ``guidance``; DM re-noises x to tau_DM (``dm_t``, ``dm_shift``; default uniform) and follows
    x0_cond - x0_fake. Each term is normalised as DMD normalises its gradient (``normalize``). The
    fake score trains on the detached samples in the same step. ``terms`` selects ("ca", "dm") (the
    method), ("ca",) or ("dm",) (the paper's ablations). With both terms at the same tau and weight 1
    the sum is exactly DMD with a guided real score. Data-free (labels only).

    On the 2-D mixture toy the CA term visibly does what guidance does: it pushes each class away
    from the others (mean radius grows with w), and DM holds the samples at the teacher's modes.

    Against the paper: student and fake score step together in every iteration, each with its own
    AdamW (DMD2's two time scales become the critic's ``critic_lr_scale``, 5 as DMD2's 5 critic
    updates per generator update); both noise levels are drawn independently of the student's step; the defaults of the two
    schedules (CA shifted by 3 to high noise, DM uniform) are our choice, not values tuned in the paper.
    """

    name: ClassVar[str] = "decoupled-dmd"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = (
        "Liu et al. 2025, Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"
    )

    terms: tuple[str, ...] = ("ca", "dm")
    guidance: float = 2.0  # the real teacher's CFG scale w (CA's size is w - 1)
    ca_weight: float = 1.0
    dm_weight: float = 1.0
    ca_t: tuple[float, float] = (0.02, 0.98)  # fractions of [t_min, t_max] before the shift
    ca_shift: float = 3.0
    dm_t: tuple[float, float] = (0.02, 0.98)
    dm_shift: float = 1.0
    normalize: bool = True
    critic_lr_scale: float = 5.0  # the fake score learns 5x faster (DMD2's two time scales; its own AdamW)

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "ca_t", tuple(self.ca_t))
        object.__setattr__(self, "dm_t", tuple(self.dm_t))
        if not self.terms or any(k not in TERMS for k in self.terms) or len(set(self.terms)) != len(self.terms):
            raise ValueError(f"terms={self.terms}: use ('ca', 'dm'), ('ca',) or ('dm',)")
        if "ca" in self.terms and self.guidance <= 1.0:
            raise ValueError(
                f"guidance={self.guidance}: the CA term is (w - 1)(cond - uncond), so it needs w > 1; or use terms=('dm',)"
            )
        if self.guidance < 0 or self.ca_weight < 0 or self.dm_weight < 0 or self.critic_lr_scale <= 0:
            raise ValueError("need guidance >= 0, ca_weight >= 0, dm_weight >= 0 and critic_lr_scale > 0")
        for nm, (lo, hi), shift in (("ca_t", self.ca_t, self.ca_shift), ("dm_t", self.dm_t, self.dm_shift)):
            if not 0.0 <= lo < hi <= 1.0 or shift <= 0:
                raise ValueError(
                    f"{nm}={(lo, hi)} must satisfy 0 <= lo < hi <= 1 (fractions of the time range), shifts > 0"
                )

    def setup(self, module: DistillModule) -> None:
        if "ca" in self.terms and not module.teacher.num_classes:
            raise ValueError(
                "the CA term needs a class-conditional teacher (its null label gives the uncond score); use terms=('dm',)"
            )
        if "ca" in self.terms and module.teacher.guidance_embedded:
            raise ValueError("the CA term needs separate cond/uncond teacher calls; this teacher takes w as an input")
        if "dm" in self.terms:
            module.critic = make_fake_score(module.teacher).requires_grad_(True)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        critic = (Part("critic", lr_scale=self.critic_lr_scale),) if "dm" in self.terms else ()
        return (Part(STUDENT), *critic)

    def loss_terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample terms (B,): "ca" and "dm" train the student, "critic" the fake score. Every random
        draw happens whatever ``terms`` holds, so ablations see the same samples and noise."""
        n, cond, real = batch.size, batch.cond, module.teacher
        x, _ = backward_simulate(module, n, cond, generator)
        sched = real.schedule
        t_ca = shifted_times(sched, n, generator, *self.ca_t, self.ca_shift, x.device)
        t_dm = shifted_times(sched, n, generator, *self.dm_t, self.dm_shift, x.device)
        eps_ca, eps_dm = randn(x.shape, generator, x), randn(x.shape, generator, x)
        out: dict[str, Tensor] = {}
        if "ca" in self.terms:
            x_t = noise_to(sched, x.detach(), t_ca, eps_ca)
            out["ca"] = self.ca_weight * dmd_loss(
                x, ca_direction(real, x.detach(), x_t, t_ca, cond, self.guidance, self.normalize)
            )
        if "dm" in self.terms:
            x_t = noise_to(sched, x.detach(), t_dm, eps_dm)
            direction = dm_direction(real, module.critic, x.detach(), x_t, t_dm, cond, 1.0, self.normalize)
            out["dm"] = self.dm_weight * dmd_loss(x, direction)
            out["critic"] = fake_score_loss(module.critic, x.detach(), cond, generator)
        return out

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.loss_terms(module, batch, generator).values())


# -- Flash-DMD -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashDMD(Objective):
    """Flash-DMD (Chen et al. 2025, "Flash-DMD: towards high-fidelity few-step image generation with
    efficient distillation and joint reinforcement learning"): timestep-aware DMD, a pixel-space GAN
    at low noise, and a reward maximised while distilling.

    Noise levels are split at ``split_t`` (a fraction of [t_min, t_max]) so DM and GAN gradients never
    act on the same noise level (the paper's remedy for DMD2's gradient conflict):

    - DM (DMD with the real score at ``guidance``) re-noises the student's sample to
      tau in [t_split, t_k], t_k the time of the student call that produced it, drawn uniformly then
      time-shifted by ``dm_shift``. So a multi-step student's late, low-noise steps (t_k <= t_split)
      get no DM term, only the GAN, as in the paper's step-wise split. A 1-step student (t_k = t_max)
      makes every decision in one call, so its band is the whole [t_split, t_max]; we weight it
      towards the low end, just above the GAN band (dm_shift 0.5: two thirds of the draws in the
      lower half), because that is where the DM signal lives: the fake-minus-real difference of
      posterior means shrinks like alpha(tau)^2 at high noise, where both scores fall back to the
      prior mean, while around SNR ~ 1 the noised student and teacher distributions still overlap
      (DMD's requirement) and the difference says which mode a sample should move to. On the 2-D
      toy, DM confined to high noise (dm_shift 2) left the 1-step student 3x further from the
      teacher (sliced Wasserstein) after 300 steps than this choice.
    - GAN: ``gan.Discriminator`` on the student's sample and a real one, both noised to the same
      t in [t_min, t_split) (clean to low noise), non-saturating losses (``gan.gan_losses``).
    - Reward: -reward_weight * module.reward(x, cond) on the student's sample (direct, differentiable
      reward fine-tuning; skipped when reward_weight == 0, an error when it is > 0 and
      ``distill(..., reward=...)`` gave none).

    Against the paper: its discriminator is a SAM-based pixel-space head and its RL stage optimises a
    latent reward model with a policy objective; here the compact ``gan.py`` head and a direct reward
    gradient (ReFL-style) stand in, and student, fake score and discriminator are three parts that
    step together after one backward (two time scales by ``critic_lr_scale`` / ``disc_lr_scale``).
    """

    name: ClassVar[str] = "flash-dmd"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = (
        "Chen et al. 2025, Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint Reinforcement Learning"
    )

    guidance: float = 1.0  # CFG scale of the real score in the DM term (1: plain distribution matching)
    dm_weight: float = 1.0
    dm_shift: float = 0.5
    split_t: float = 0.1  # DM above, GAN below this fraction of [t_min, t_max]
    gan_weight: float = 0.01  # vs the DM term as critic.dmd_loss reduces it (mean over dimensions)
    reward_weight: float = 0.0
    normalize: bool = True
    disc_width: int = 64
    critic_lr_scale: float = 5.0
    disc_lr_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.split_t < 1.0:
            raise ValueError(f"split_t={self.split_t} must lie in (0, 1): DM acts above it, the pixel GAN below")
        if min(self.guidance, self.dm_weight, self.gan_weight, self.reward_weight) < 0:
            raise ValueError("guidance, dm_weight, gan_weight and reward_weight must be >= 0")
        if self.dm_shift <= 0 or self.critic_lr_scale <= 0 or self.disc_lr_scale <= 0 or self.disc_width < 1:
            raise ValueError("need dm_shift > 0, critic_lr_scale > 0, disc_lr_scale > 0 and disc_width >= 1")

    def setup(self, module: DistillModule) -> None:
        t = module.teacher
        module.critic = make_fake_score(t).requires_grad_(True)
        if self.gan_weight > 0:
            module.disc = Discriminator(t.sample_shape, t.num_classes, self.disc_width)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        # The fake score is not clipped: it starts as the teacher and must chase a moving student, so
        # its gradient is large exactly when it lags, and a clip at the student's norm would slow it
        # below the student, inverting the two time-scale rule (one clip over all parts scaled both).
        critic = Part("critic", lr_scale=self.critic_lr_scale, grad_clip=0.0)
        disc = (Part("disc", lr_scale=self.disc_lr_scale),) if self.gan_weight > 0 else ()
        return (Part(STUDENT), critic, *disc)

    def dm_times(self, schedule, t_k: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(tau, active): DM noise levels in [t_split, t_k] (time-shifted to high noise) and the mask
        of samples whose student call sat above t_split (the others get no DM term)."""
        lo = _frac_to_t(schedule, self.split_t)
        u = time_shift(torch.rand(t_k.shape[0], generator=generator, dtype=torch.float64), self.dm_shift).to(t_k.device)
        hi = t_k.to(torch.float64).clamp(max=schedule.t_max)
        active = hi > lo
        return lo + (hi - lo).clamp(min=0.0) * u, active

    def gan_times(self, schedule, n: int, generator: torch.Generator, device=None) -> Tensor:
        """GAN noise levels t in [t_min, t_split): clean to low noise."""
        return sample_times(schedule, n, generator, 0.0, self.split_t, device)

    def loss_terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample terms (B,): "dm", "gan_g" and "reward" train the student, "critic" the fake
        score, "gan_d" the discriminator."""
        n, cond, real = batch.size, batch.cond, module.teacher
        sched = real.schedule
        x, t_k = backward_simulate(module, n, cond, generator)
        out: dict[str, Tensor] = {}
        # Distribution matching at high noise.
        tau, active = self.dm_times(sched, t_k, generator)
        x_t = noise_to(sched, x.detach(), tau, randn(x.shape, generator, x))
        direction = dm_direction(real, module.critic, x.detach(), x_t, tau, cond, self.guidance, self.normalize)
        out["dm"] = self.dm_weight * active.to(x.dtype) * dmd_loss(x, direction)
        out["critic"] = fake_score_loss(module.critic, x.detach(), cond, generator)
        # Pixel-space GAN at low noise, against real data.
        if self.gan_weight > 0:
            if batch.x0 is None:
                raise ValueError("flash-dmd's pixel GAN needs real data: pass data=(x0, labels)")
            t_g = self.gan_times(sched, n, generator, x.device)
            fake = noise_to(sched, x, t_g, randn(x.shape, generator, x))
            real_x = noise_to(sched, batch.x0, t_g, randn(x.shape, generator, x))
            g, d = gan_losses(module.disc, fake, real_x, sched.net_time(t_g), cond)
            out["gan_g"], out["gan_d"] = self.gan_weight * g, d
        # Joint reward fine-tuning.
        if self.reward_weight > 0:
            reward = module_reward(module, self.name)
            out["reward"] = -self.reward_weight * reward_values(reward, x, cond)
        return out

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.loss_terms(module, batch, generator).values())


__all__ = [
    "DecoupledDMD",
    "FlashDMD",
    "backward_simulate",
    "ca_direction",
    "cond_uncond_x0",
    "dm_direction",
    "shifted_times",
    "student_times",
    "time_shift",
]
