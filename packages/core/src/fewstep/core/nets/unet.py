"""DDPM++-style U-Net (Song et al. 2021, App. H; as configured in Karras et al. 2022, EDM).

Residual blocks (GroupNorm + SiLU, 3x3 convs) with the time + conditioning embedding injected as a
per-channel scale-shift, self-attention at chosen resolutions, U-Net skip connections, residual
sums scaled by 1/sqrt(2), and a zero-initialised output conv so a fresh net predicts zeros.
The net is parametrisation-agnostic: `Denoiser` decides whether its output is eps, x0, v or flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fewstep.core.nets.embeddings import (
    CondEmbedding,
    check_inputs,
    config_from_dict,
    config_to_dict,
    group_norm,
    timestep_embedding,
)
from torch import Tensor, nn

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # keeps the variance of residual sums ~1 (DDPM++ / EDM)


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyperparameters (DDPM++ naming: channels, channel_mult, num_res_blocks, attn_resolutions)."""

    in_channels: int = 3
    out_channels: int = 0  # 0 -> same as in_channels
    image_size: int = 32
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    num_classes: int = 0  # >0: class labels; label == num_classes (or -1) is the null token
    cond_dim: int = 0  # >0: float conditioning vectors (B, cond_dim); all-NaN rows are null
    dropout: float = 0.0
    label_dropout: float = 0.1  # CFG dropout, training mode only
    guidance_embed: bool = False  # guidance-distilled students take the CFG scale w as an input

    def __post_init__(self):
        # Accept lists (e.g. from JSON) for the tuple fields.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for name in ("in_channels", "image_size", "channels", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("out_channels", "num_classes", "cond_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"UNetConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_classes > 0 and self.cond_dim > 0:
            raise ValueError("UNetConfig: set at most one of num_classes and cond_dim")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(
                f"UNetConfig.channel_mult must be non-empty positive ints, got {self.channel_mult}"
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig.image_size={self.image_size} must be divisible by {factor} "
                f"(downsampled {len(self.channel_mult) - 1} times for channel_mult="
                f"{self.channel_mult}); change image_size or use fewer levels"
            )
        missing = sorted(set(self.attn_resolutions) - set(self.resolutions))
        if missing:
            raise ValueError(
                f"UNetConfig.attn_resolutions {missing} are never reached; the U-Net works at "
                f"resolutions {list(self.resolutions)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(
                f"UNetConfig.label_dropout must be in [0, 1], got {self.label_dropout}"
            )

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side length at each level, e.g. (32, 16, 8)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return config_from_dict(cls, d)


class ResBlock(nn.Module):
    """DDPM++ residual block: GN-SiLU-conv, scale-shift by the embedding, GN-SiLU-dropout-conv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool):
        super().__init__()
        self.norm0 = group_norm(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = dropout
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SelfAttention(out_ch) if attn else None
        self.concat_split = 0  # >0 in decoder blocks: input channels [:split] are h, the rest the skip

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))  # (B, out, H, W)
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1.0))
        h = self.conv1(F.dropout(h, self.dropout, self.training))
        h = (h + self.skip(x)) * SKIP_SCALE
        return h if self.attn is None else self.attn(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual (Vaswani et al. 2017)."""

    def __init__(self, ch: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hh * ww)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, c/heads) each
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, c/heads)
        a = a.transpose(-1, -2).reshape(b, c, hh, ww)
        return (x + self.proj(a)) * SKIP_SCALE


class Downsample(nn.Module):
    """2x2 average pooling, DDPM++'s [1, 1] resample filter: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """3x3 conv at the low resolution, then nearest x2: (B, C_in, H, W) -> (B, C_out, 2H, 2W).

    Convolving before upsampling costs 4x fewer FLOPs than the usual upsample-then-conv and also
    narrows the channels to the next level's width, which keeps the decoder cheap on CPU.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


class UNet(nn.Module):
    """DDPM++ U-Net (Song et al. 2021; Karras et al. 2022): forward(x, t, cond) -> (B, out, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_emb = CondEmbedding(cfg.num_classes, cfg.cond_dim, emb_dim, cfg.label_dropout)
        if cfg.guidance_embed:
            # w-conditioning of guided distillation (Meng et al. 2023, Sec. 3.1): Fourier features
            # of w through an MLP, added to the time embedding. Zero-initialised output so a student
            # copied from its teacher starts as the teacher.
            self.guidance_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.guidance_mlp[2].weight)
            nn.init.zeros_(self.guidance_mlp[2].bias)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # Encoder: each res block's output is saved as a skip for the mirrored decoder block.
        self.down = nn.ModuleList()
        skip_chs, cur = [], ch
        widths = [ch * m for m in cfg.channel_mult]
        for level, (width, res) in enumerate(zip(widths, cfg.resolutions)):
            for _ in range(cfg.num_res_blocks):
                attn = res in cfg.attn_resolutions
                self.down.append(ResBlock(cur, width, emb_dim, cfg.dropout, attn))
                cur = width
                skip_chs.append(cur)
            if level < len(widths) - 1:
                self.down.append(Downsample())

        # Bottleneck: res + attention, res.
        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, emb_dim, cfg.dropout, attn=True),
                ResBlock(cur, cur, emb_dim, cfg.dropout, attn=False),
            ]
        )

        # Decoder: num_res_blocks blocks per level, each eats one skip (concatenated on C).
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width, res = widths[level], cfg.resolutions[level]
            for _ in range(cfg.num_res_blocks):
                attn = res in cfg.attn_resolutions
                block = ResBlock(cur + skip_chs.pop(), width, emb_dim, cfg.dropout, attn)
                block.concat_split = cur  # input is cat([h, skip]): channels [:cur] are h (for quantizers)
                self.up.append(block)
                cur = width
            if level > 0:
                self.up.append(Upsample(cur, widths[level - 1]))
                cur = widths[level - 1]

        self.norm_out = group_norm(cur)
        self.conv_out = nn.Conv2d(cur, cfg.out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # a fresh net outputs zeros
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, guidance: Tensor | float | None = None) -> Tensor:
        cfg = self.config
        t = check_inputs("UNet", x, t, cfg.in_channels, cfg.image_size)  # (B,)
        b = x.shape[0]
        emb = self.time_mlp(timestep_embedding(t, cfg.channels).to(x.dtype))  # (B, E)
        if cfg.guidance_embed:
            w = torch.as_tensor(1.0 if guidance is None else guidance, device=x.device, dtype=torch.float32)
            w = w.expand(b) if w.ndim == 0 else w
            emb = emb + self.guidance_mlp(timestep_embedding(100.0 * (w - 1.0), cfg.channels).to(x.dtype))
        elif guidance is not None:
            raise ValueError("this UNet was not built with guidance_embed=True; it cannot take a guidance input")
        c = self.cond_emb(cond, b, x.device)  # (B, E) or None
        if c is not None:
            emb = emb + c.to(emb.dtype)
        emb = F.silu(emb)

        h = self.conv_in(x)  # (B, ch, H, W)
        skips = []
        for block in self.down:
            if isinstance(block, ResBlock):
                h = block(h, emb)
                skips.append(h)
            else:
                h = block(h)  # (B, C, H/2, W/2)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)  # (B, C', 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out, H, W)
