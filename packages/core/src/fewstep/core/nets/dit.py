"""Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023, "DiT", Sec. 3.2).

Patchify -> add fixed 2-D sin-cos position embedding -> `depth` transformer blocks whose LayerNorms
are modulated (shift, scale) and whose residual branches are gated by the time + conditioning
embedding, with all modulation and the output layer zero-initialised -> final adaLN layer ->
unpatchify. Attention uses `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fewstep.core.nets.embeddings import (
    CondEmbedding,
    check_inputs,
    config_from_dict,
    config_to_dict,
    timestep_embedding,
)
from torch import Tensor, nn

FREQ_DIM = 256  # width of the sinusoidal time features fed to the time MLP (as in DiT)


@dataclass(frozen=True)
class DiTConfig:
    """DiT hyperparameters (paper naming: patch_size p, hidden_size, depth, num_heads)."""

    in_channels: int = 3
    out_channels: int = 0  # 0 -> same as in_channels
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 0  # >0: class labels; label == num_classes (or -1) is the null token
    cond_dim: int = 0  # >0: float conditioning vectors (B, cond_dim); all-NaN rows are null
    label_dropout: float = 0.1  # CFG dropout, training mode only

    def __post_init__(self):
        for name in (
            "in_channels",
            "image_size",
            "patch_size",
            "hidden_size",
            "depth",
            "num_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("out_channels", "num_classes", "cond_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"DiTConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_classes > 0 and self.cond_dim > 0:
            raise ValueError("DiTConfig: set at most one of num_classes and cond_dim")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DiTConfig.image_size={self.image_size} must be divisible by "
                f"patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} must be divisible by 4 "
                "(2-D sin-cos position embedding)"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"DiTConfig.label_dropout must be in [0, 1], got {self.label_dropout}")

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        return config_from_dict(cls, d)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding (MAE / DiT): (grid*grid, dim), row-major patches."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(pos, pos, indexing="ij")  # (grid, grid) each

    def axis(p: Tensor) -> Tensor:
        a = p.reshape(-1, 1) * omega[None, :]  # (N, dim/4)
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)  # (N, dim/2)

    return torch.cat([axis(gy), axis(gx)], dim=1).float()  # (N, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with (B, D) modulation broadcast over tokens."""
    return torch.addcmul(shift[:, None], x, 1.0 + scale[:, None])


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, D/heads) each
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero (DiT Fig. 3): gated, modulated attention and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Linear(dim, 6 * dim)  # -> shift/scale/gate for attention and MLP
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)  # (B, D) each
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a zero-initialised linear map to p*p*C_out per token."""

    def __init__(self, dim: int, patch: int, out_ch: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * out_ch)
        for m in (self.ada, self.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)  # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*C_out)


class DiT(nn.Module):
    """DiT (Peebles & Xie 2023): forward(x, t, cond) -> (B, out, H, W)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as an nn.Linear over the patch
        nn.init.zeros_(self.patch_embed.bias)
        # Fixed, so not saved in checkpoints.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, cfg.grid)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(FREQ_DIM, d), nn.SiLU(), nn.Linear(d, d))
        for m in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
        self.cond_emb = CondEmbedding(cfg.num_classes, cfg.cond_dim, d, cfg.label_dropout)
        if cfg.num_classes > 0:
            nn.init.normal_(self.cond_emb.table.weight, std=0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.final = FinalLayer(d, p, cfg.out_ch)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        cfg = self.config
        g, p, c = cfg.grid, cfg.patch_size, cfg.out_ch
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        cfg = self.config
        t = check_inputs("DiT", x, t, cfg.in_channels, cfg.image_size)  # (B,)
        b = x.shape[0]
        h = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        h = h + self.pos_embed.to(h.dtype)
        c = self.time_mlp(timestep_embedding(t, FREQ_DIM).to(x.dtype))  # (B, D)
        y = self.cond_emb(cond, b, x.device)  # (B, D) or None
        if y is not None:
            c = c + y.to(c.dtype)
        c = F.silu(c)  # every adaLN map starts with SiLU (DiT)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))  # (B, out, H, W)
