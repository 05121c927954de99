"""A compact GAN head for distillation objectives that add an adversarial term (SCott, Hyper-SD's
optional term, and later DMD2's GAN head), trained with the student in ONE optimizer step.

``Discriminator(sample_shape, num_classes)`` scores samples x at a noise level t with a label: a
small strided conv trunk for (B, C, H, W) images or an MLP for (B, D) vectors, a sinusoidal time
embedding added to the features, and a projection head for the label (Miyato & Koyama 2018,
Eq. 3: logit = psi(h) + <embed(y), h>). ``gan_losses`` returns the non-saturating losses
(Goodfellow et al. 2014, Sec. 3; the -log D trick) per sample:

- generator: softplus(-D(fake)) with the discriminator's parameters DETACHED (a functional call
  through ``torch.func.functional_call``), so its gradient reaches the generator only;
- discriminator: softplus(D(sg(fake))) + softplus(-D(real)) on DETACHED fakes, so its gradient
  reaches the discriminator only.

Their sum is one scalar per sample and one ``backward`` gives each network its own gradient, which
is what the core train loop (one optimizer over every trainable parameter) needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..nets.embeddings import timestep_embedding


class Discriminator(nn.Module):
    """D(x, t, cond) -> (B,) logits for images (C, H, W) or vectors (D,).

    ``t`` is the noise level on the 0..1000 net-time scale (``schedule.net_time``) or None for clean
    inputs; ``cond`` holds integer labels (``num_classes`` or < 0 means unconditional) or None.
    """

    def __init__(self, sample_shape: tuple[int, ...], num_classes: int = 0, width: int = 64, depth: int = 3):
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        self.num_classes = int(num_classes)
        self.width = int(width)
        if len(self.sample_shape) == 3:  # (C, H, W): stride-2 convs down to <= 4x4, then global mean pool
            c, h, _ = self.sample_shape
            layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1)]
            ch, size = width, h
            while size > 4 and len(layers) < 2 * depth:
                layers += [nn.SiLU(), nn.Conv2d(ch, min(2 * ch, 4 * width), 4, stride=2, padding=1)]
                ch, size = min(2 * ch, 4 * width), math.ceil(size / 2)
            layers += [nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)]
            self.trunk = nn.Sequential(*layers)
        elif len(self.sample_shape) == 1:  # (D,): an MLP
            ch, layers = width, [nn.Linear(self.sample_shape[0], width)]
            for _ in range(depth - 1):
                layers += [nn.SiLU(), nn.Linear(width, width)]
            self.trunk = nn.Sequential(*layers)
        else:
            raise ValueError(f"Discriminator takes (C, H, W) or (D,) samples, got sample_shape={self.sample_shape}")
        self.features = ch
        self.time = nn.Sequential(nn.Linear(width, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.out = nn.Linear(ch, 1)
        self.embed = nn.Embedding(num_classes + 1, ch) if num_classes else None  # last row: unconditional

    def forward(self, x: Tensor, t: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        h = self.trunk(x)
        if h.ndim == 4:
            h = h.mean((2, 3))  # (B, F)
        if t is not None:
            t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
            h = h + self.time(timestep_embedding(t, self.width).to(h.dtype))
        h = F.silu(h)
        logit = self.out(h).squeeze(1)  # (B,)
        if self.embed is not None:
            y = torch.full((x.shape[0],), self.num_classes, device=x.device) if cond is None else cond.long()
            y = torch.where((y < 0) | (y > self.num_classes), torch.full_like(y, self.num_classes), y)
            logit = logit + (self.embed(y) * h).sum(1)  # projection discriminator
        return logit


def frozen_call(disc: nn.Module, *args, **kwargs) -> Tensor:
    """``disc(*args)`` with its parameters and buffers detached: gradients flow to the inputs only."""
    params = {k: v.detach() for k, v in disc.named_parameters()}
    buffers = {k: v.detach() for k, v in disc.named_buffers()}
    return functional_call(disc, (params, buffers), args, kwargs)


def gan_losses(
    disc: nn.Module,
    fake: Tensor,
    real: Tensor,
    t: Tensor | None = None,
    cond: Tensor | None = None,
    real_t: Tensor | None = None,
    real_cond: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Non-saturating (generator, discriminator) losses per fake sample, each (B,).

    The generator term sees the discriminator frozen; the discriminator term sees the fakes
    detached. ``real`` is judged at ``real_t`` / ``real_cond`` (default: the fakes' ``t`` / ``cond``);
    when it holds a different number of rows its mean loss is added to every row.
    """
    g = F.softplus(-frozen_call(disc, fake, t, cond))  # -log sigmoid(D(G(z)))
    d_fake = F.softplus(disc(fake.detach(), t, cond))  # -log(1 - sigmoid(D(G(z))))
    real_t = t if real_t is None else real_t
    real_cond = cond if real_cond is None else real_cond
    d_real = F.softplus(-disc(real.detach(), real_t, real_cond))  # -log sigmoid(D(x))
    if d_real.shape != d_fake.shape:
        d_real = d_real.mean().expand_as(d_fake)
    return g, d_fake + d_real


def r1_penalty(disc: nn.Module, real: Tensor, t: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
    """R1 gradient penalty ||grad_x D(x)||^2 on real data per sample (Mescheder et al. 2018, Eq. 9)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(real, t, cond).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)


__all__ = ["Discriminator", "frozen_call", "gan_losses", "r1_penalty"]
