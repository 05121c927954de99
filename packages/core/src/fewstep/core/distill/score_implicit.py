"""Score distillation by a fake score: VSD / SwiftBrush (with SNOOPI's random-scale guidance), SIM
(score implicit matching) and Uni-Instruct (f-divergence weights). All three are data-free in their
generator update: the student generates x from noise, x is noised to x_t = alpha x + sigma eps, and
the generator follows a weighted difference of the real (teacher) and fake scores at x_t; the fake
score (``critic.fake_score_for``: a teacher copy, full weights where the papers use LoRA) is trained
by denoising on the detached samples in the same optimiser step (one backward, disjoint gradients).

Notation (the Denoiser returns x0 predictions D): score s(x_t) = (alpha D(x_t) - x_t) / sigma^2,
eps(x_t) = (x_t - alpha D(x_t)) / sigma, so

    s_real - s_fake = alpha (D_real - D_fake) / sigma^2,    eps_real - eps_fake = alpha (D_fake - D_real) / sigma.

A student with K > 1 steps is trained by backward simulation (DMD2, Yin et al. 2024b): it runs k+1 of its own
consistency steps (k uniform in 0..K-1) and the gradient flows through the last call only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..denoiser import _bcast
from ..parts import STUDENT, Part
from ..updates import noise_to
from .base import Batch, DistillModule, Objective, randn
from .critic import dmd_loss, fake_score_for, fake_score_loss, sample_times
from .gan import Discriminator, gan_losses
from .rollout import student_samples, student_times

F_DIVERGENCES = ("reverse-kl", "kl", "jensen-shannon")


# -- shared pieces ----------------------------------------------------------------------------------
def generate(module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
    """The student's samples from pure noise at t_max (B, *sample_shape), by backward simulation
    (DMD2, Yin et al. 2024b, Sec. 4.5; ``rollout.student_samples``): k+1 consistency steps on its own
    grid (k uniform in 0..K-1, one per batch, for a K-step student; no draw for a one-step one),
    gradient through the last call only (earlier steps detached and re-noised, Song et al. 2023, Alg. 1)."""
    one_step = len(student_times(module.student)) == 1
    return student_samples(module, batch.size, batch.cond, generator, k=0 if one_step else None)[0]


def fake_eval(fake, x_t: Tensor, t: Tensor, cond: Tensor | None, guidance: float = 1.0) -> Tensor:
    """The fake score's (guided) x0 in eval mode, as the teacher is called (same x0 clipping)."""
    was = fake.training
    fake.eval()
    try:
        return fake(x_t, t, cond, guidance)
    finally:
        fake.train(was)


def drop_labels(fake, cond: Tensor | None, p: float, generator: torch.Generator) -> Tensor | None:
    """Labels with a fraction p replaced by the null label, so the fake score also learns its
    unconditional score (needed for its own CFG passes, SNOOPI)."""
    if cond is None or p <= 0:
        return cond
    drop = (torch.rand(cond.shape[0], generator=generator) < p).to(cond.device)
    return torch.where(drop.view(-1, *([1] * (cond.ndim - 1))), fake.null_cond(cond), cond)


# -- VSD / SwiftBrush + SNOOPI ------------------------------------------------------------------------
@dataclass(frozen=True)
class VSD(Objective):
    """VSD (Wang et al. 2023, ProlificDreamer, Eq. 9) as SwiftBrush trains a one-step text-to-image
    student with it (Nguyen & Tran 2024), with SNOOPI's random-scale guidance (Nguyen et al.
    2024, "SNOOPI: Supercharged One-step Diffusion Distillation with Proper Guidance", its PG-SB).

    Generator gradient (ProlificDreamer Eq. 9): E_t,eps[ w(t) (eps_real(x_t) - eps_fake(x_t)) dx/dtheta ].
    With w(t) = sigma_t / alpha_t (the papers leave w free) this is (D_fake - D_real)(x_t): DMD's
    direction without its per-sample normalisation (``critic.dmd_direction``); the loss is
    ``critic.dmd_loss`` (gradient w.r.t. x equal to that direction). The fake score (LoRA in the
    papers, a full copy here) is trained by denoising on sg(x).

    Guidance: without ``guidance_range`` the teacher uses the run's ``teacher_guidance`` and the fake
    score none (ProlificDreamer: CFG 7.5 vs 1). SNOOPI's PG-SB: each batch draws ONE scale
    w ~ U[lo, hi] used by BOTH the teacher and the fake score, each guided with its own conditional
    and unconditional passes; the fake score then trains with ``uncond_prob`` of its labels dropped
    so it has an unconditional score. Times t ~ U[t_lo, t_hi] of the schedule (SwiftBrush: 0.02-0.98).
    """

    name: ClassVar[str] = "vsd"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = (
        "Wang et al. 2023, ProlificDreamer (VSD); Nguyen & Tran 2024, SwiftBrush; "
        "Nguyen et al. 2024, SNOOPI: Supercharged One-step Diffusion Distillation with Proper Guidance"
    )

    guidance_range: tuple[float, float] | None = None  # SNOOPI: (lo, hi) for both teachers' CFG scale
    uncond_prob: float = 0.1  # label dropout of the fake score's denoising loss (with guidance_range)
    t_lo: float = 0.02
    t_hi: float = 0.98
    critic_lr_scale: float = 1.0

    def __post_init__(self):
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            if not 0.0 <= lo <= hi:
                raise ValueError(f"guidance_range={self.guidance_range}: give (lo, hi) with 0 <= lo <= hi")
            object.__setattr__(self, "guidance_range", (float(lo), float(hi)))  # JSON lists come back as tuples
        if not 0.0 <= self.uncond_prob < 1.0:
            raise ValueError(f"uncond_prob={self.uncond_prob} must be in [0, 1)")
        if not 0.0 <= self.t_lo < self.t_hi <= 1.0:
            raise ValueError(f"need 0 <= t_lo < t_hi <= 1, got ({self.t_lo}, {self.t_hi})")
        if self.critic_lr_scale <= 0:
            raise ValueError(f"critic_lr_scale={self.critic_lr_scale} must be > 0")

    def setup(self, module: DistillModule) -> None:
        module.critic = fake_score_for(module.teacher, module.student)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    def guidance_scales(self, module: DistillModule, generator: torch.Generator) -> tuple[float, float]:
        """(teacher, fake score) CFG scales for this batch; SNOOPI draws one w ~ U[lo, hi] for both."""
        if self.guidance_range is None:
            return module.teacher_guidance, 1.0
        lo, hi = self.guidance_range
        w = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
        return w, w

    def ratio_weight(self, module: DistillModule, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor | None:
        """A per-sample weight (B,) of the score difference; None = 1 (reverse KL). Uni-Instruct's hook."""
        return None

    @torch.no_grad()
    def direction(self, module: DistillModule, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        """The generator's gradient w.r.t. x: weight * (D_fake - D_real)(x_t), per sample."""
        w_real, w_fake = self.guidance_scales(module, generator)
        x = x.detach()
        t = sample_times(module.teacher.schedule, x.shape[0], generator, self.t_lo, self.t_hi, x.device)
        x_t = noise_to(module.teacher.schedule, x, t, randn(x.shape, generator, x))
        x0_real = module.teacher(x_t, t, cond, w_real)
        x0_fake = fake_eval(module.critic, x_t, t, cond, w_fake)
        d = x0_fake.float() - x0_real.float()
        weight = self.ratio_weight(module, x_t, t, cond)
        return d if weight is None else _bcast(weight, d) * d

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parts: "gen" trains the student only, "critic" the fake score only."""
        x = generate(module, batch, generator)
        gen = dmd_loss(x, self.direction(module, x, batch.cond, generator))
        p = self.uncond_prob if self.guidance_range is not None else 0.0
        cond = drop_labels(module.critic, batch.cond, p, generator)
        out = {"gen": gen, "critic": fake_score_loss(module.critic, x.detach(), cond, generator)}
        return {**out, **self.extra_terms(module, batch, x.detach(), generator)}

    def extra_terms(
        self, module: DistillModule, batch: Batch, x: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """More per-sample terms on the detached samples x (Uni-Instruct's discriminator); none here."""
        return {}

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.terms(module, batch, generator).values())


# -- SIM -------------------------------------------------------------------------------------------
def sim_generator_loss(
    real, fake, x: Tensor, t: Tensor, eps: Tensor, cond: Tensor | None, c: float, guidance: float = 1.0
) -> Tensor:
    """SIM's generator loss per sample (B,) with the pseudo-Huber distance (derivation in :class:`SIM`):
    sg(u)^T (D_real(x_t) - x), u = y / sqrt(||y||^2 + c^2), y = alpha (D_real - D_fake)(x_t) / sigma.
    Gradients reach x (and the student) directly and through the frozen teacher's input x_t."""
    sched = real.schedule
    x_t = noise_to(sched, x, t, eps)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    with torch.no_grad():
        xs = x_t.detach()
        y = _bcast(alpha / sigma, x) * (real(xs, t, cond, guidance).float() - fake_eval(fake, xs, t, cond).float())
        u = y / _bcast(torch.sqrt(y.pow(2).flatten(1).sum(1) + c * c), y)  # grad of the pseudo-Huber d
    x0_real = real(x_t, t, cond, guidance).float()  # teacher frozen: its input carries the gradient
    return (u * (x0_real - x.float())).flatten(1).sum(1)


@dataclass(frozen=True)
class SIM(Objective):
    """SIM: one-step distillation by score implicit matching (Luo et al. 2024, NeurIPS, "One-Step
    Diffusion Distillation through Score Implicit Matching", Sec. 3, Thm. 3.1, Alg. 1). Data-free.

    Divergence: D(theta) = int w(t) E_{x_t ~ sg(q_t)} d(s_p(x_t) - s_q,theta(x_t)) dt, with the
    pseudo-Huber distance d(y) = sqrt(||y||^2 + c^2) - c, the generator's own noised samples as the
    (stop-gradient) sampling distribution, and s_q the generator's unknown score. Derivation (ours,
    following Sec. 3): with u = grad d(y) = y / sqrt(||y||^2 + c^2), y = s_p - s_q,

      1. dD/dtheta = -E_{q_t}[u^T ds_q/dtheta]: theta enters only through the unknown score;
      2. score projection (SIM's identity; Vincent 2011): for every theta and any u not depending on it,
         E_{q_t}[u^T s_q] = E_{x0 = g(z), x_t | x0}[u^T grad log q_t(x_t | x0)]; differentiating both
         sides in theta moves the derivative of the unknown score onto the samples:
         dD/dtheta = d/dtheta E_{z, eps}[u(x_t)^T (s_q(x_t) - grad log q_t(x_t | x0))] with u and s_q
         frozen functions and the gradient through x0 = g_theta(z), x_t = alpha x0 + sigma eps
         (SiD's form: it needs the fake score's input Jacobian);
      3. SIM's implicit surrogate (Thm. 3.1, Alg. 1) puts the teacher's score in the bracket and
         stops the gradient at u, so the fake score (Alg. 1's psi, trained by denoising on sg(x0))
         enters only through the weight:

             L(theta) = E_{z, eps}[ sg(u)^T (s_p(x_t) - grad_{x_t} log q_t(x_t | x0)) ].

         It equals step 2 where the score difference's input Jacobian drops out (the fake score at
         the teacher, y = 0; equal-covariance Gaussians, checked in the tests against the closed
         form) and needs no backward pass through the fake score. Sign: with y = s_p - s_q the
         bracket enters with a plus, so that descent on L descends D.

    In x0 terms s_p - grad log q(x_t | x0) = alpha (D_real(x_t) - x0) / sigma^2. We measure y in eps
    units (sigma times the score difference: d_t(y) = d(sigma_t y), a distance for each t, which the
    derivation allows) and take w(t) = sigma_t / alpha_t, so the loss per sample is

        L = sg(u)^T (D_real(x_t) - x0),   u = y / sqrt(||y||^2 + c^2),   y = alpha (D_real - D_fake) / sigma,

    whose gradient w.r.t. x0 is -(I - alpha dD_real/dx_t)^T u: along D_real - D_fake (DMD's direction,
    self-normalised by the pseudo-Huber weight) minus the teacher-Jacobian correction. When the fake
    score equals the teacher, u = 0 and the gradient vanishes. ``huber_c`` is c per sqrt(dimension).
    Simplified: times uniform in [t_lo, t_hi] (SIM's EDM sampling of t is not used); full-copy fake score.
    """

    name: ClassVar[str] = "sim"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = "Luo et al. 2024, One-Step Diffusion Distillation through Score Implicit Matching"

    huber_c: float = 0.1
    t_lo: float = 0.02
    t_hi: float = 0.98
    critic_lr_scale: float = 1.0

    def __post_init__(self):
        if self.huber_c <= 0:
            raise ValueError(f"huber_c={self.huber_c} must be > 0 (the pseudo-Huber scale c per sqrt(dim))")
        if not 0.0 <= self.t_lo < self.t_hi <= 1.0:
            raise ValueError(f"need 0 <= t_lo < t_hi <= 1, got ({self.t_lo}, {self.t_hi})")
        if self.critic_lr_scale <= 0:
            raise ValueError(f"critic_lr_scale={self.critic_lr_scale} must be > 0")

    def setup(self, module: DistillModule) -> None:
        module.critic = fake_score_for(module.teacher, module.student)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    def terms(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-sample parts: "gen" trains the student only, "critic" the fake score only."""
        x = generate(module, batch, generator)
        sched = module.teacher.schedule
        t = sample_times(sched, x.shape[0], generator, self.t_lo, self.t_hi, x.device)
        eps = randn(x.shape, generator, x)
        c = self.huber_c * math.sqrt(x[0].numel())
        gen = sim_generator_loss(module.teacher, module.critic, x, t, eps, batch.cond, c, module.teacher_guidance)
        return {"gen": gen, "critic": fake_score_loss(module.critic, x.detach(), batch.cond, generator)}

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        return sum(self.terms(module, batch, generator).values())


# -- Uni-Instruct --------------------------------------------------------------------------------------
def f_weight(f: str, log_r: Tensor) -> Tensor:
    """f''(r) r^2 for the density ratio r = p/q given as log r: the weight of the score difference in
    the f-divergence gradient (f-distill, Xu et al. 2024; Uni-Instruct's expansion).
    reverse KL f = -log r: 1; KL f = r log r: r; Jensen-Shannon f = r log r - (1 + r) log((1 + r) / 2):
    r / (1 + r) = sigmoid(log r)."""
    if f == "reverse-kl":
        return torch.ones_like(log_r)
    if f == "kl":
        return log_r.exp()
    if f == "jensen-shannon":
        return torch.sigmoid(log_r)
    raise ValueError(f"unknown f-divergence {f!r}; choose from {F_DIVERGENCES}")


@dataclass(frozen=True)
class UniInstruct(VSD):
    """Uni-Instruct (Wang et al. 2025, "Uni-Instruct: One-step Diffusion Model through Unified Diffusion
    Divergence Instruction"): the gradient of an f-divergence D_f(p_t || q_t) between the teacher's and
    the generator's noised distributions, expanded over diffusion time, is the score difference weighted
    by f''(r) r^2 at the noised sample (Uni-Instruct's expansion; f-distill, Xu et al. 2024):

        grad_theta = -E_t,z,eps[ w(t) f''(r(x_t)) r(x_t)^2 (s_p(x_t) - s_q(x_t)) dx_t/dtheta ],  r = p_t / q_t.

    Weights (``f_weight``): reverse KL 1 (DMD / VSD / Diff-Instruct: this objective with f="reverse-kl"
    IS :class:`VSD`), KL r (mode-covering), Jensen-Shannon r / (1 + r). The ratio comes from a
    discriminator on noised samples (``gan.Discriminator``, trained non-saturating on real data
    against the generated samples noised to the same t): its optimal logit is log r. The weights are
    divided by their batch mean (f-distill's normalisation) and log r is clipped to +-``log_r_clip``.
    So data="real" (the discriminator's positives); the generator itself never sees data.
    Simplified: the paper's further terms (its score-implicit / SiD-like parts, the GAN term on the
    generator) are not included; the fake score's guidance options are VSD's.
    """

    name: ClassVar[str] = "uni-instruct"
    data: ClassVar[str] = "real"
    paper: ClassVar[str] = (
        "Wang et al. 2025, Uni-Instruct: One-step Diffusion Model through Unified Diffusion Divergence Instruction"
    )

    f: str = "jensen-shannon"
    log_r_clip: float = 5.0
    disc_width: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.f not in F_DIVERGENCES:
            raise ValueError(f"f={self.f!r}; choose from {F_DIVERGENCES}")
        if self.log_r_clip <= 0 or self.disc_width < 1:
            raise ValueError("need log_r_clip > 0 and disc_width >= 1")

    def setup(self, module: DistillModule) -> None:
        super().setup(module)
        if self.f != "reverse-kl":
            t = module.teacher
            module.disc = Discriminator(t.sample_shape, t.num_classes or 0, self.disc_width)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        disc = (Part("disc", lr_scale=self.critic_lr_scale),) if self.f != "reverse-kl" else ()
        return (*super().parts(module), *disc)

    def log_ratio(self, module: DistillModule, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """log r = log p_t / q_t at x_t from the discriminator's logit (B,), clipped."""
        net_t = module.teacher.schedule.net_time(t).to(x_t.dtype)
        return module.disc(x_t, net_t, cond).float().clamp(-self.log_r_clip, self.log_r_clip)

    def ratio_weight(self, module: DistillModule, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor | None:
        if self.f == "reverse-kl":
            return None
        h = f_weight(self.f, self.log_ratio(module, x_t, t, cond))
        return h / h.mean().clamp(min=1e-8)

    def extra_terms(
        self, module: DistillModule, batch: Batch, x: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """ "disc": the discriminator's non-saturating loss on real vs generated samples noised to the
        same t (discriminator only; the samples are detached), when f needs the ratio."""
        if self.f == "reverse-kl":
            return {}
        if batch.x0 is None:
            raise ValueError("uni-instruct estimates the density ratio with real data: pass data=(x0, labels)")
        sched = module.teacher.schedule
        t = sample_times(sched, x.shape[0], generator, self.t_lo, self.t_hi, x.device)
        fake_t = noise_to(sched, x, t, randn(x.shape, generator, x))
        real_t = noise_to(sched, batch.x0.to(x), t, randn(x.shape, generator, x))
        _, d = gan_losses(module.disc, fake_t, real_t, sched.net_time(t).to(x.dtype), batch.cond)
        return {"disc": d}


__all__ = ["F_DIVERGENCES", "SIM", "VSD", "UniInstruct", "f_weight", "generate", "sim_generator_loss"]
