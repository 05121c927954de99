"""Tiny models and data shared by the core tests (fast on CPU)."""

import torch
from torch import nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import VPDiscrete


class TinyNet(nn.Module):
    """A small conv net with time and label inputs: enough to train for a few steps."""

    def __init__(self, channels=1, num_classes=3, width=8):
        super().__init__()
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, width)
        self.time = nn.Linear(1, width)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t, cond=None):
        if cond is None:
            cond = torch.full((x.shape[0],), self.num_classes, device=x.device)
        cond = torch.where(cond < 0, torch.full_like(cond, self.num_classes), cond)
        h = self.inp(x) + (self.emb(cond) + self.time(t.view(-1, 1) / 1000.0))[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def tiny_denoiser(seed=0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(TinyNet(), VPDiscrete(), "eps", sample_shape=(1, 4, 4), num_classes=3)


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (y.float() - 1).view(-1, 1, 1, 1) * 0.7 + 0.1 * torch.randn(n, 1, 4, 4, generator=g)
    return x, y


def tiny_unet_denoiser(seed=0) -> Denoiser:
    """A random fewstep UNet at 8x8 (with an output conv that is not zero), clipped like the teachers."""
    from fewstep.core.nets import UNet, UNetConfig

    torch.manual_seed(seed)
    net = UNet(UNetConfig(in_channels=1, image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(4,), num_classes=3))
    with torch.no_grad():  # the zero-initialised output conv would make every output 0
        net.conv_out.weight.normal_(0, 0.1)
    return Denoiser(net, VPDiscrete(), "eps", sample_shape=(1, 8, 8), num_classes=3, clip_x0=1.0).eval()


def tiny_dit_denoiser(seed=0) -> Denoiser:
    """A random fewstep DiT at 8x8 whose adaLN maps have weights (adaLN-Zero would be the identity)."""
    from fewstep.core.nets import DiT, DiTConfig

    torch.manual_seed(seed)
    net = DiT(DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                        num_classes=3))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, m.weight.shape[1] ** -0.5)
    return Denoiser(net, VPDiscrete(), "eps", sample_shape=(1, 8, 8), num_classes=3, clip_x0=1.0).eval()
