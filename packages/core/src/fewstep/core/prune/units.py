"""Structural units of fewstep's nets: the channel groups and heads that pruning may remove.

A unit is a slice of a layer's *inner* width, never of the residual stream or the U-Net skips, so
removing it changes no other layer's shape:
- ``res``: the inner width of a U-Net ``ResBlock`` in whole GroupNorm groups of ``norm1``. GroupNorm
  normalises each group on its own statistics, so zeroing a group's activations (the mask) and
  deleting the group (physical pruning) give the same output for the other groups.
- ``heads``: attention heads of a U-Net ``SelfAttention`` (when it has more than one) or of a DiT
  ``Attention``; heads are independent until the output projection sums them.
- ``mlp``: the hidden channels of a DiT MLP in groups of ``mlp_group`` (shape-friendly widths).

A unit set lists the units of one layer; its ``consumer`` is the submodule whose *input* carries
the unit channels, which is where a mask multiplies them (ResBlock ``conv1``, attention ``proj``,
MLP ``fc2``). A layer with a single unit is not prunable (a layer keeps at least one unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor, nn

from ..nets.dit import DiT, DiTBlock
from ..nets.unet import ResBlock, SelfAttention, UNet

KINDS = ("res", "heads", "mlp")


@dataclass(frozen=True)
class UnitSet:
    """The prunable units of one layer, e.g. the 16 GroupNorm groups of ``down.0``'s inner width."""

    path: str  # the module the plan names: a ResBlock, an attention module, or a DiT MLP
    kind: str  # "res" | "heads" | "mlp"
    sizes: tuple[int, ...]  # channels of each unit (heads: the head dim), in channel order
    per_channel: int  # parameters that go with one inner channel (all layers it touches)
    consumer: str  # path of the submodule whose input holds the unit channels
    channel_dim: int  # that input's channel axis: 1 for (B, C, H, W), -1 for tokens (B, N, C)

    @property
    def count(self) -> int:
        return len(self.sizes)

    @property
    def params(self) -> tuple[int, ...]:
        """Parameters removed with each unit."""
        return tuple(s * self.per_channel for s in self.sizes)

    @property
    def total_params(self) -> int:
        return sum(self.params)

    def channels(self, units: list[int] | Tensor) -> Tensor:
        """Inner channel indices (long) of the given units, in channel order."""
        starts = [0, *accumulate(self.sizes)]
        idx = [torch.arange(starts[u], starts[u] + self.sizes[u]) for u in sorted(int(u) for u in units)]
        return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)

    def expand(self, gates: Tensor) -> Tensor:
        """Per-unit gates (count,) -> per-channel gates (sum(sizes),)."""
        return gates.repeat_interleave(torch.tensor(self.sizes, device=gates.device))


def _res_units(path: str, blk: ResBlock) -> UnitSet | None:
    groups, width = blk.norm1.num_groups, blk.norm1.num_channels
    if groups < 2:
        return None
    c0, c1, aff = blk.conv0, blk.conv1, blk.affine
    per = (
        c0.in_channels * math.prod(c0.kernel_size) + (c0.bias is not None)  # conv0: one output row
        + 2 * (aff.in_features + (aff.bias is not None))  # affine: its scale row and shift row
        + (2 if blk.norm1.affine else 0)  # norm1 weight and bias
        + c1.out_channels * math.prod(c1.kernel_size)  # conv1: one input column
    )
    return UnitSet(path, "res", (width // groups,) * groups, per, f"{path}.conv1" if path else "conv1", 1)


def _head_dim(attn: nn.Module, inner: int) -> int:
    return int(getattr(attn, "head_dim", inner // attn.heads))


def _unet_heads(path: str, attn: SelfAttention) -> UnitSet | None:
    if attn.heads < 2:
        return None
    qkv, proj = attn.qkv, attn.proj
    inner = qkv.out_channels // 3
    per = 3 * (qkv.in_channels + (qkv.bias is not None)) + proj.out_channels  # 1x1 convs
    return UnitSet(path, "heads", (_head_dim(attn, inner),) * attn.heads, per, f"{path}.proj", 1)


def _dit_heads(path: str, attn: nn.Module) -> UnitSet | None:
    if attn.heads < 2:
        return None
    qkv, proj = attn.qkv, attn.proj
    inner = qkv.out_features // 3
    per = 3 * (qkv.in_features + (qkv.bias is not None)) + proj.out_features
    return UnitSet(path, "heads", (_head_dim(attn, inner),) * attn.heads, per, f"{path}.proj", -1)


def _dit_mlp(path: str, mlp: nn.Sequential, group: int) -> UnitSet | None:
    fc1, fc2 = mlp[0], mlp[2]
    hidden = fc1.out_features
    sizes = (group,) * (hidden // group) + ((hidden % group,) if hidden % group else ())
    if len(sizes) < 2:
        return None
    per = fc1.in_features + (fc1.bias is not None) + fc2.out_features
    return UnitSet(path, "mlp", sizes, per, f"{path}.2", -1)


def check_net(net: nn.Module) -> nn.Module:
    """The net itself if it is a fewstep UNet or DiT; a TypeError that says what to pass otherwise."""
    if not isinstance(net, UNet | DiT):
        raise TypeError(
            f"structural pruning knows fewstep's UNet and DiT, got {type(net).__name__}; build the "
            "model with fewstep.core.nets (or load a fewstep checkpoint) to prune it"
        )
    return net


def discover_units(net: nn.Module, kinds: tuple[str, ...] = KINDS, mlp_group: int = 8) -> list[UnitSet]:
    """Every prunable unit set of a fewstep UNet or DiT, in module order."""
    check_net(net)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown unit kinds {unknown}; choose from {KINDS}")
    if mlp_group < 1:
        raise ValueError(f"mlp_group={mlp_group} must be >= 1 (channels per MLP unit)")
    found: list[UnitSet | None] = []
    for path, m in net.named_modules():
        if isinstance(m, ResBlock) and "res" in kinds:
            found.append(_res_units(path, m))
        elif isinstance(m, SelfAttention) and "heads" in kinds:
            found.append(_unet_heads(path, m))
        elif isinstance(m, DiTBlock):
            if "heads" in kinds:
                found.append(_dit_heads(f"{path}.attn", m.attn))
            if "mlp" in kinds:
                found.append(_dit_mlp(f"{path}.mlp", m.mlp, mlp_group))
    return [u for u in found if u is not None]


def prunable_params(units: list[UnitSet]) -> int:
    """Parameters that pruning could remove (every unit of every set)."""
    return sum(u.total_params for u in units)
