"""The fake-score critic and the distribution-matching gradient, shared by every objective that needs
a reverse-divergence term (rCM's regulariser, Hyper-SD's one-step score stage, and the
distribution-matching family of DMD / DMD2 / SIM).

DMD (Yin et al. 2024, Eq. 7-8): for a generated sample x, noise it to x_t, and follow
grad = (x0_fake(x_t) - x0_real(x_t)) / mean|x - x0_real(x_t)|: the difference of the two scores
s = (alpha x0 - x_t) / sigma^2 up to the positive weight alpha / sigma^2, normalised per sample as
in the paper. The fake score is a copy of the teacher trained by plain denoising on the detached
student samples; the real score is the frozen teacher.

DMD2 (Yin et al. 2024b, Sec. 4.3) also turns the fake score into a discriminator: a small
classification head on its bottleneck features, trained non-saturating on real data against
generated samples noised to the same t. :class:`FakeScoreGAN` holds the fake score and that head
(``feature_module`` picks the layer; nets without a known layer get ``gan.Discriminator``), and is
a discriminator ``D(x_t, t, cond)`` that ``gan.gan_losses`` takes as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser, from_x0_eps
from ..updates import noise_to
from .base import copy_net, randn
from .gan import Discriminator


def make_fake_score(teacher: Denoiser) -> Denoiser:
    """A trainable copy of the teacher that will track the student's distribution."""
    return Denoiser(
        copy_net(teacher.net),
        teacher.schedule,
        teacher.prediction,
        sample_shape=teacher.sample_shape,
        num_classes=teacher.num_classes,
        clip_x0=teacher.clip_x0,
    )


def fake_score_for(teacher: Denoiser, student: Denoiser) -> Denoiser:
    """The fake score to train beside ``student``: a copy of the teacher (DMD's initialisation), or,
    for a teacher without weights (an analytic score such as the test mixtures), a copy of the
    student's net in the teacher's schedule and the student's parametrisation. Always trainable."""
    if any(True for _ in teacher.net.parameters()):
        fake = make_fake_score(teacher)
    else:
        fake = Denoiser(
            copy.deepcopy(student.net),
            teacher.schedule,
            student.prediction,
            sample_shape=teacher.sample_shape,
            num_classes=teacher.num_classes,
            clip_x0=teacher.clip_x0,
        )
    return fake.requires_grad_(True)


def sample_times(schedule, n: int, generator: torch.Generator, lo: float = 0.02, hi: float = 0.98, device=None) -> Tensor:
    """t uniform in [lo, hi] of the schedule's [t_min, t_max] (DMD's T_min/T_max = 0.02/0.98)."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return (schedule.t_min + (schedule.t_max - schedule.t_min) * u).to(device)


def fake_score_loss(
    fake: Denoiser, x: Tensor, cond: Tensor | None, generator: torch.Generator, t: Tensor | None = None
) -> Tensor:
    """Denoising loss of the fake score on detached generated samples, per sample (B,), at times t
    (B,) float64: drawn uniformly over the schedule's whole [t_min, t_max] when None (DMD), or given
    (TDM's per-step intervals). Draws t (when None), then eps."""
    x = x.detach()
    if t is None:
        t = sample_times(fake.schedule, x.shape[0], generator, 0.0, 1.0, x.device)
    eps = randn(x.shape, generator, x)
    alpha, sigma = fake.coefficients(t)
    target = from_x0_eps(x, eps, fake.prediction, alpha, sigma)
    pred = fake(noise_to(fake.schedule, x, t, eps), t, cond, kind=fake.prediction)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


@torch.no_grad()
def dmd_direction(
    real: Denoiser,
    fake: Denoiser,
    x: Tensor,
    cond: Tensor | None,
    generator: torch.Generator,
    guidance: float = 1.0,
    t: Tensor | None = None,
) -> Tensor:
    """The normalised DMD update direction at generated samples x (DMD Eq. 8): x moves along -grad."""
    x = x.detach()
    if t is None:
        t = sample_times(real.schedule, x.shape[0], generator, device=x.device)
    x_t = noise_to(real.schedule, x, t, randn(x.shape, generator, x))
    was = fake.training
    fake.eval()
    x0_fake = fake(x_t, t, cond)
    fake.train(was)
    x0_real = real(x_t, t, cond, guidance)
    return (x0_fake - x0_real) / dmd_normaliser(x, x0_real)


def dmd_normaliser(x: Tensor, x0_real: Tensor) -> Tensor:
    """DMD's per-sample weight mean|x - x0_real| (Yin et al. 2024, Eq. 8; the CS / sigma^2-alpha
    factors cancel in x0 form), floored at 1e-4 and broadcast to x: every objective divides by this."""
    return (x - x0_real).abs().flatten(1).mean(1).clamp(min=1e-4).view(-1, *([1] * (x.ndim - 1)))


def dmd_loss(x: Tensor, direction: Tensor) -> Tensor:
    """The one reduction of a DMD-style update, 0.5 mean_d (x - sg(x - direction))^2 per sample
    (B,), as DMD2's reference code reduces it: its gradient w.r.t. x is ``direction / D``. Every
    objective adds it unscaled but for its own weight, so weights mean the same in every objective
    and do not change with the sample size D."""
    target = (x - direction).detach()
    return 0.5 * (x.float() - target.float()).pow(2).flatten(1).mean(1)


# -- DMD2's GAN head on the fake score ------------------------------------------------------------
def feature_module(net: nn.Module) -> nn.Module | None:
    """The layer of a fake-score net whose output the GAN head reads: a fewstep UNet's last middle
    block (the bottleneck: DMD2 classifies its fake UNet's encoder output), a fewstep DiT's middle
    block; None for other nets."""
    from ..nets import DiT, UNet

    if isinstance(net, UNet):
        return net.mid[-1]
    if isinstance(net, DiT):
        return net.blocks[(len(net.blocks) - 1) // 2]
    return None


class FeatureHead(nn.Module):
    """Features -> (B,) logits: (C, H, W) maps by a 3x3 conv and mean pool, (N, D) tokens by a linear
    layer and mean over tokens, (D,) vectors by an MLP (DMD2's head is a short conv stack, Sec. 4.3)."""

    def __init__(self, feature_shape: tuple[int, ...], width: int = 64):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        if len(self.feature_shape) == 3:
            self.inp = nn.Conv2d(self.feature_shape[0], width, 3, padding=1)
        elif len(self.feature_shape) in (1, 2):
            self.inp = nn.Linear(self.feature_shape[-1], width)
        else:
            raise ValueError(f"FeatureHead takes (C, H, W), (N, D) or (D,) features, got {self.feature_shape}")
        self.out = nn.Linear(width, 1)

    def forward(self, h: Tensor) -> Tensor:
        h = torch.nn.functional.silu(self.inp(h))
        if h.ndim == 4:
            h = h.mean((2, 3))  # (B, width)
        elif h.ndim == 3:
            h = h.mean(1)  # (B, width)
        return self.out(h).squeeze(1)  # (B,)


class _Features(Exception):
    """Carries the hooked layer's output out of the fake score's forward (skipping its decoder)."""

    def __init__(self, h: Tensor):
        super().__init__()
        self.h = h


class FakeScoreGAN(nn.Module):
    """The fake score with DMD2's GAN head on its features (Yin et al. 2024b, Sec. 4.3).

    ``fake`` is the fake-score Denoiser (train it with :func:`fake_score_loss`, use it in
    :func:`dmd_direction`); ``forward(x_t, t, cond)`` at schedule times t (B,) runs it up to the
    layer ``feature_module`` picks (a forward hook ends the pass there) and returns the head's (B,)
    logits, so ``gan.gan_losses(fake_score_gan, fake_t, real_t, t, cond)`` gives the generator term
    (fake score and head frozen, gradient to the samples) and the discriminator term (samples
    detached, gradient to the head AND the fake score's encoder, as in DMD2). For nets without a
    known feature layer the head is a separate ``gan.Discriminator`` on (x_t, t, cond).
    """

    def __init__(self, fake: Denoiser, width: int = 64):
        super().__init__()
        if fake.sample_shape is None:
            raise ValueError("FakeScoreGAN needs a fake score with a sample_shape")
        self.fake = fake
        self._capture = False
        layer = feature_module(fake.net)
        if layer is None:
            self.head = None
            self.disc = Discriminator(fake.sample_shape, fake.num_classes, width)
        else:
            self.disc = None
            layer.register_forward_hook(self._grab)
            self.head = FeatureHead(self._probe(), width)

    def _grab(self, module: nn.Module, args, output: Tensor) -> None:
        if self._capture:
            raise _Features(output)

    def features(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The fake score's hooked features at (x_t, t): (B, C, H, W) for a UNet, (B, N, D) for a DiT."""
        self._capture = True
        try:
            self.fake(x_t, t, cond)
        except _Features as f:
            return f.h
        finally:
            self._capture = False
        raise RuntimeError("the fake score's feature layer did not run")

    @torch.no_grad()
    def _probe(self) -> tuple[int, ...]:
        p = next(self.fake.net.parameters())
        x = torch.zeros(1, *self.fake.sample_shape, dtype=p.dtype, device=p.device)
        t = torch.full((1,), float(self.fake.schedule.t_max), dtype=torch.float64, device=p.device)
        return tuple(self.features(x, t).shape[1:])

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.disc is not None:
            return self.disc(x_t, self.fake.schedule.net_time(t).to(x_t.dtype), cond)
        return self.head(self.features(x_t, t, cond))
