"""Attention modules that keep their head dimension when heads are removed.

fewstep's ``Attention`` (DiT) and ``SelfAttention`` (U-Net) derive the head dimension from the
residual width (``d // heads``), which is right only while every head is present. These subclasses
carry ``head_dim`` explicitly, so a pruned module computes exactly what the full one did with the
removed heads' outputs zeroed. They keep the parent's submodule names (``qkv``, ``proj``, ``norm``),
so state-dict keys are unchanged and checkpoints of pruned nets load into rebuilt ones.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nets.dit import Attention
from ..nets.unet import SKIP_SCALE, SelfAttention


class PrunedAttention(Attention):
    """DiT multi-head attention over tokens (B, N, D) with ``heads`` heads of ``head_dim`` each."""

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, heads: int, head_dim: int):
        nn.Module.__init__(self)  # the parent's __init__ would build full-width layers
        if qkv.out_features != 3 * heads * head_dim or proj.in_features != heads * head_dim:
            raise ValueError(
                f"PrunedAttention: qkv out {qkv.out_features} / proj in {proj.in_features} do not fit "
                f"{heads} heads of dim {head_dim}"
            )
        self.heads, self.head_dim = heads, head_dim
        self.qkv, self.proj = qkv, proj

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, head_dim) each
        a = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as before pruning
        return self.proj(a.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))  # (B, N, D)


class PrunedSelfAttention(SelfAttention):
    """U-Net residual self-attention over H*W positions with ``heads`` heads of ``head_dim``."""

    def __init__(self, norm: nn.GroupNorm, qkv: nn.Conv2d, proj: nn.Conv2d, heads: int, head_dim: int):
        nn.Module.__init__(self)
        if qkv.out_channels != 3 * heads * head_dim or proj.in_channels != heads * head_dim:
            raise ValueError(
                f"PrunedSelfAttention: qkv out {qkv.out_channels} / proj in {proj.in_channels} do not "
                f"fit {heads} heads of dim {head_dim}"
            )
        self.heads, self.head_dim = heads, head_dim
        self.norm, self.qkv, self.proj = norm, qkv, proj

    def forward(self, x: Tensor) -> Tensor:
        b, _, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.head_dim, hh * ww)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, head_dim) each
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, self.heads * self.head_dim, hh, ww)
        return (x + self.proj(a)) * SKIP_SCALE
