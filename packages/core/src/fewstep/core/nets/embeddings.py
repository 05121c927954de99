"""Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020) and conditioning.

Shared by every backbone in `fewstep.core.nets`:
- `timestep_embedding`: t on the DDPM-like 0..1000 scale -> (B, dim) sin/cos features.
- `CondEmbedding`: class labels or float embeddings -> (B, emb_dim), with a learned null token and
  classifier-free-guidance label dropout (Ho & Salimans 2022) applied only in training mode.
- `check_inputs`: validates (x, t) for an image net and broadcasts t to (B,).
- `config_to_dict` / `config_from_dict`: JSON round trip for the frozen net configs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

C = TypeVar("C")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t (Vaswani et al. 2017, Sec. 3.5; DDPM's time encoding).

    t: (B,) float on a 0..1000 scale. Returns (B, dim) as [cos(t w_k), sin(t w_k)] with
    w_k = max_period^(-k / half), k = 0..half-1 (zero-padded if dim is odd).
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class CondEmbedding(nn.Module):
    """Conditioning embedding with a null token for classifier-free guidance (Ho & Salimans 2022).

    Exactly one mode, fixed at construction:
    - labels (num_classes > 0): int (B,) labels; `num_classes` or -1 means "no label" (null row).
    - float (cond_dim > 0): (B, cond_dim) embeddings through a 2-layer MLP; an all-NaN row is null.
    `cond=None` means null for every row. In training mode each row is replaced by null with
    probability `label_dropout`.
    """

    def __init__(self, num_classes: int, cond_dim: int, emb_dim: int, label_dropout: float):
        super().__init__()
        if num_classes > 0 and cond_dim > 0:
            raise ValueError("CondEmbedding: set at most one of num_classes and cond_dim")
        self.num_classes = num_classes
        self.cond_dim = cond_dim
        self.label_dropout = label_dropout
        if num_classes > 0:
            # Row `num_classes` is the learned null token.
            self.table = nn.Embedding(num_classes + 1, emb_dim)
        elif cond_dim > 0:
            self.mlp = nn.Sequential(
                nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            self.null = nn.Parameter(torch.zeros(emb_dim))

    @property
    def enabled(self) -> bool:
        return self.num_classes > 0 or self.cond_dim > 0

    def _drop(self, null: Tensor) -> Tensor:
        # CFG dropout: mark extra rows as null, training mode only.
        if self.training and self.label_dropout > 0:
            null = null | (torch.rand(null.shape, device=null.device) < self.label_dropout)
        return null

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """Returns (B, emb_dim), or None for an unconditional net (which then requires cond=None)."""
        if not self.enabled:
            if cond is not None:
                raise ValueError(
                    "this net is unconditional (num_classes=0, cond_dim=0) but got a cond tensor; "
                    "pass cond=None or build the net with num_classes>0 or cond_dim>0"
                )
            return None
        if self.num_classes > 0:
            return self._labels(cond, batch, device)
        return self._floats(cond, batch, device)

    def _labels(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        n = self.num_classes
        if cond is None:
            labels = torch.full((batch,), n, dtype=torch.long, device=device)
        else:
            if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
                raise ValueError(
                    f"expected integer class labels of shape ({batch},) for num_classes={n}, got "
                    f"dtype {cond.dtype}; pass a torch.long tensor (null = {n} or -1)"
                )
            if cond.shape != (batch,):
                raise ValueError(
                    f"expected class labels of shape ({batch},), got {tuple(cond.shape)}; "
                    "pass one label per batch row"
                )
            if bool(((cond < -1) | (cond > n)).any()):
                raise ValueError(
                    f"class labels must lie in [0, {n - 1}], or be {n} / -1 for 'no label'; "
                    f"got min {int(cond.min())}, max {int(cond.max())}"
                )
            labels = cond.long().to(device)
        null = self._drop(labels.eq(n) | labels.eq(-1))  # (B,)
        labels = torch.where(null, torch.full_like(labels, n), labels)
        return self.table(labels)  # (B, emb_dim)

    def _floats(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        d = self.cond_dim
        if cond is None:
            return self.null.expand(batch, -1)  # (B, emb_dim)
        if not cond.dtype.is_floating_point:
            raise ValueError(
                f"expected a float conditioning embedding of shape ({batch}, {d}), got dtype "
                f"{cond.dtype}; pass floats (all-NaN rows mean 'no conditioning')"
            )
        if cond.shape != (batch, d):
            raise ValueError(
                f"expected a conditioning embedding of shape ({batch}, {d}), got "
                f"{tuple(cond.shape)}; pass one cond_dim={d} vector per batch row"
            )
        nan = torch.isnan(cond)  # (B, d)
        null = nan.all(dim=1)  # (B,)
        if bool((nan.any(dim=1) & ~null).any()):
            raise ValueError(
                "a conditioning row is partly NaN; a row must be all finite, or all NaN for null"
            )
        null = self._drop(null)
        emb = self.mlp(torch.nan_to_num(cond, nan=0.0).to(self.null.dtype))  # (B, emb_dim)
        return torch.where(null[:, None], self.null.expand_as(emb), emb)


def check_inputs(name: str, x: Tensor, t: Tensor | float, channels: int, size: int) -> Tensor:
    """Validates x (B, channels, size, size) float and returns t broadcast to (B,) float."""
    want = f"(B, {channels}, {size}, {size})"
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{name} expected a float tensor x of shape {want}, got {got}; "
            "convert images with x.float()"
        )
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(
            f"{name} expected x of shape {want}, got {tuple(x.shape)}; pass images with "
            f"{channels} channels at {size}x{size}, or build the net with a config whose "
            "in_channels / image_size match the data"
        )
    b = x.shape[0]
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(
            f"{name} expected t of shape ({b},) or a scalar, got {tuple(t.shape)}; "
            "pass one network time (0..1000 scale) per batch row"
        )
    return t.float()


def config_to_dict(cfg: Any) -> dict:
    """A frozen config dataclass as a JSON-serialisable dict (tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v
        for f in dataclasses.fields(cfg)
    }


def config_from_dict(cls: type[C], d: dict) -> C:
    """Builds config `cls` from a dict; unknown keys are an error (lists become tuples)."""
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known keys are {known}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides `channels`."""
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)
