"""A two-part module for the train-loop tests: a student and a critic trained side by side, each
by its own denoising loss, with the critic's own optimiser settings and update ratio."""

import torch
from torch import nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.losses import DenoisingLoss
from fewstep.core.parts import Part
from fewstep.core.schedules import VPDiscrete

try:
    from ..tiny import TinyNet, tiny_unet_denoiser
except ImportError:  # run as a torchrun script, with tests/core on sys.path
    from tiny import TinyNet, tiny_unet_denoiser


class Pair(nn.Module):
    """``student`` and ``critic`` Denoisers; ``forward`` returns the sum of their per-sample
    denoising losses, so a DDP or FSDP wrapper's forward is the whole objective."""

    def __init__(self, student, critic, ratio: int = 2, critic_clip: float | None = 0.5):
        super().__init__()
        self.student, self.critic = student, critic
        self.ratio, self.critic_clip = ratio, critic_clip
        self.loss = DenoisingLoss()

    def parts(self):
        critic = Part("critic", lr_scale=2.0, betas=(0.0, 0.99), weight_decay=0.01, grad_clip=self.critic_clip,
                      updates_per_student_update=self.ratio)
        return (Part("student"), critic)

    def forward(self, x0, cond, gen):
        return self.loss(self.student, self.student, x0, cond, gen) + self.loss(self.critic, self.critic, x0, cond, gen)


def make_pair(ratio: int = 2, critic_clip: float | None = 0.5) -> Pair:
    """A tiny UNet student (its blocks are what FSDP shards and checkpoints) and a conv-net critic."""
    student = tiny_unet_denoiser(seed=0).train()
    torch.manual_seed(1)
    critic = Denoiser(TinyNet(), VPDiscrete(), "eps", sample_shape=(1, 8, 8), num_classes=3)
    return Pair(student, critic, ratio, critic_clip)


def pair_loss(model, batch, gen):
    return model(batch[0], batch[1], gen)


def pair_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (y.float() - 1).view(-1, 1, 1, 1) * 0.7 + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y
