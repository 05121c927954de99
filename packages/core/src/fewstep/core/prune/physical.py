"""Physical removal of pruned units: smaller weight tensors, fewer FLOPs, the same function.

``prune_units(net, plan)`` takes ``{unit-set path: kept unit indices}`` and rebuilds each named layer
from the kept rows / columns of its weights (EcoDiff, Zhang et al. 2024: masks are
thresholded, then the masked structures are removed; no retraining). The result computes exactly
what the masked net computes with those units' gates at 0 (``tests/core/test_prune_physical.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nets.dit import Attention
from ..nets.unet import ResBlock, SelfAttention
from .modules import PrunedAttention, PrunedSelfAttention
from .units import KINDS, UnitSet, check_net, discover_units

Plan = dict[str, list[int]]


def _param(w: Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(w.detach().clone(), requires_grad=like.requires_grad)


def _conv(conv: nn.Conv2d, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Conv2d:
    """A copy of ``conv`` keeping output channels ``rows`` and input channels ``cols``."""
    if conv.groups != 1:
        raise ValueError("pruning grouped convolutions is not supported")
    w = conv.weight  # (out, in, kh, kw)
    w = w if rows is None else w[rows.to(w.device)]
    w = w if cols is None else w[:, cols.to(w.device)]
    new = nn.Conv2d(
        w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, 1,
        conv.bias is not None, conv.padding_mode, device=w.device, dtype=w.dtype,
    )
    new.weight = _param(w, conv.weight)
    if conv.bias is not None:
        new.bias = _param(conv.bias if rows is None else conv.bias[rows.to(w.device)], conv.bias)
    return new


def _linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A copy of ``lin`` keeping outputs ``rows`` and inputs ``cols``."""
    w = lin.weight  # (out, in)
    w = w if rows is None else w[rows.to(w.device)]
    w = w if cols is None else w[:, cols.to(w.device)]
    new = nn.Linear(w.shape[1], w.shape[0], lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight = _param(w, lin.weight)
    if lin.bias is not None:
        new.bias = _param(lin.bias if rows is None else lin.bias[rows.to(w.device)], lin.bias)
    return new


def _group_norm(gn: nn.GroupNorm, channels: Tensor, groups: int) -> nn.GroupNorm:
    new = nn.GroupNorm(groups, len(channels), gn.eps, gn.affine)  # affine params replaced below
    if gn.affine:
        new.weight = _param(gn.weight[channels.to(gn.weight.device)], gn.weight)
        new.bias = _param(gn.bias[channels.to(gn.bias.device)], gn.bias)
    return new


def _qkv_rows(inner: int, channels: Tensor) -> Tensor:
    """Rows of a fused qkv projection (q, k, v stacked, each head-major) for the kept channels."""
    return torch.cat([channels, inner + channels, 2 * inner + channels])


def _prune_res(blk: ResBlock, ch: Tensor, groups: int) -> None:
    # conv0 output rows, the matching scale and shift rows of affine, norm1 groups, conv1 columns.
    width = blk.norm1.num_channels
    blk.conv0 = _conv(blk.conv0, rows=ch)
    blk.affine = _linear(blk.affine, rows=torch.cat([ch, width + ch]))  # chunked as (scale, shift)
    blk.norm1 = _group_norm(blk.norm1, ch, groups)
    blk.conv1 = _conv(blk.conv1, cols=ch)


def _pruned_unet_attn(attn: SelfAttention, ch: Tensor, heads: int, head_dim: int) -> PrunedSelfAttention:
    inner = attn.qkv.out_channels // 3
    qkv = _conv(attn.qkv, rows=_qkv_rows(inner, ch))
    return PrunedSelfAttention(attn.norm, qkv, _conv(attn.proj, cols=ch), heads, head_dim)


def _pruned_dit_attn(attn: Attention, ch: Tensor, heads: int, head_dim: int) -> PrunedAttention:
    inner = attn.qkv.out_features // 3
    qkv = _linear(attn.qkv, rows=_qkv_rows(inner, ch))
    return PrunedAttention(qkv, _linear(attn.proj, cols=ch), heads, head_dim)


def _set(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, module)


def check_plan(plan: Plan, units: list[UnitSet]) -> dict[str, list[int]]:
    """Validated plan with sorted unique indices; names what is wrong and how to fix it."""
    by_path = {u.path: u for u in units}
    out = {}
    for path, kept in plan.items():
        if path not in by_path:
            raise ValueError(
                f"plan names {path!r}, which is not a prunable unit set of this net; known: "
                f"{sorted(by_path)[:6]}{' ...' if len(by_path) > 6 else ''}"
            )
        idx = sorted({int(i) for i in kept})
        n = by_path[path].count
        if not idx:
            raise ValueError(f"plan keeps no unit of {path!r}; a layer must keep at least one unit")
        if idx[0] < 0 or idx[-1] >= n:
            raise ValueError(f"plan for {path!r} keeps unit indices {idx}, but the layer has units 0..{n - 1}")
        out[path] = idx
    return out


def prune_units(net: nn.Module, plan: Plan, mlp_group: int = 8) -> nn.Module:
    """Remove every unit the plan does not keep, in place; returns ``net``.

    ``plan`` maps a unit-set path (see ``discover_units``) to the unit indices to keep; sets it
    does not name stay whole. ``mlp_group`` must be the one the plan was made with.
    """
    units = discover_units(check_net(net), KINDS, mlp_group)
    by_path = {u.path: u for u in units}
    for path, kept in check_plan(plan, units).items():
        u = by_path[path]
        if len(kept) == u.count:
            continue
        ch = u.channels(kept)  # kept inner channels, (k,)
        m = net.get_submodule(path)
        if u.kind == "res":
            _prune_res(m, ch, len(kept))
        elif u.kind == "heads" and isinstance(m, SelfAttention):
            _set(net, path, _pruned_unet_attn(m, ch, len(kept), u.sizes[0]))
        elif u.kind == "heads":
            _set(net, path, _pruned_dit_attn(m, ch, len(kept), u.sizes[0]))
        else:  # DiT MLP: fc1 rows, fc2 columns
            m[0] = _linear(m[0], rows=ch)
            m[2] = _linear(m[2], cols=ch)
    return net
