"""The denoising network of the discrete teachers: a small bidirectional transformer.

Tokens (B, L) and a time t (B,) in [0, 1] -> logits (B, L, V). The time enters as a sinusoidal
embedding through an MLP, added to every position (masked diffusion needs little of it: the share
of masks already tells the time, MDLM Sec. 3.5, but the uniform process and LSD+'s learnt
schedule use it). Pre-norm encoder layers from torch.nn; learnt positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NetConfig:
    vocab_size: int
    length: int
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        if min(self.vocab_size, self.length, self.dim, self.depth, self.heads) < 1:
            raise ValueError(f"every size must be >= 1: {self}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be a multiple of heads={self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of t (B,) -> (B, dim), frequencies 1 .. 1000 over [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(1, half - 1))
    args = t.float()[:, None] * 1000.0 * freqs[None]  # (B, half): angular rates 1 .. 1000 per unit t
    return torch.cat([args.sin(), args.cos()], dim=-1)


class DiffusionTransformer(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = c = config
        self.tokens = nn.Embedding(c.vocab_size, c.dim)
        self.positions = nn.Parameter(torch.randn(c.length, c.dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, c.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.vocab_size)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] > self.config.length:
            raise ValueError(f"tokens must be (B, L) with L <= {self.config.length}, got {tuple(z.shape)}")
        h = self.tokens(z) + self.positions[: z.shape[1]] + self.time(time_embedding(t, self.config.dim))[:, None]
        return self.out(self.norm(self.encoder(h)))
