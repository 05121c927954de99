"""Symmetric integer and FP8 quantization of tensors: the arithmetic every scheme is built from.

Weights are quantized per output channel (row of the (N, K) matrix), activations per tensor with a
calibrated static scale, or per token (row) with a scale computed on the fly. All schemes are
symmetric (zero point 0), so an int8 x int8 product accumulated in int32 is rescaled by one outer
product of scales:  y = (q_x @ q_w^T) * s_x[:, None] * s_w[None, :]  (Jacob et al. 2018, Eq. 4 with
zero points removed). 4-bit weights are stored two per byte (low nibble first).
"""

from __future__ import annotations

import torch
from torch import Tensor

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def qmax(bits: int) -> int:
    """Largest level of a symmetric signed grid: 127 for 8 bits, 7 for 4 bits."""
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}: fewstep quantizes to 4 or 8 bits")
    return 2 ** (bits - 1) - 1


def scale_from_amax(amax: Tensor, bits: int | str) -> Tensor:
    """Step size that maps [-amax, amax] onto the grid (int bits, or "fp8" for e4m3)."""
    top = FP8_MAX if bits == "fp8" else float(qmax(int(bits)))
    return (amax.float() / top).clamp_min(1e-12)


def quantize_int(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """round(x / scale) clamped to the symmetric grid, as int8 (scale broadcasts against x)."""
    q = qmax(bits)
    return torch.clamp(torch.round(x.float() / scale), -q, q).to(torch.int8)


def quantize_fp8(x: Tensor, scale: Tensor) -> Tensor:
    """x / scale cast to float8 e4m3 (saturating at +-448)."""
    return torch.clamp(x.float() / scale, -FP8_MAX, FP8_MAX).to(FP8)


def quantize_weight(w: Tensor, bits: int | str, group: int = 0) -> tuple[Tensor, Tensor]:
    """Symmetric quantization of a (N, K) matrix per output channel -> (q, scale (N,)), or per
    group of ``group`` consecutive input columns -> (q, scale (N, ceil(K / group))).

    q is int8 for 4 and 8 bits (4-bit values lie in [-7, 7]; pack them with `pack_int4`) or
    float8 e4m3 for "fp8". Group-wise scales (as GPTQ / AWQ use for 4-bit weights) follow the
    weight's range across K, at one scale per ``group`` weights.
    """
    if w.ndim != 2:
        raise ValueError(f"quantize_weight takes a (N, K) matrix, got shape {tuple(w.shape)}")
    if group:
        if bits == "fp8":
            raise ValueError("fp8 weights use per-channel scales; group-wise scales are for int4/int8")
        n, k = w.shape
        g = -(-k // group)
        padded = torch.nn.functional.pad(w.detach().abs(), (0, g * group - k))
        scale = scale_from_amax(padded.reshape(n, g, group).amax(dim=2), bits)  # (N, G)
        return quantize_int(w, expand_groups(scale, group, k), int(bits)), scale
    scale = scale_from_amax(w.detach().abs().amax(dim=1), bits)  # (N,)
    if bits == "fp8":
        return quantize_fp8(w, scale[:, None]), scale
    return quantize_int(w, scale[:, None], int(bits)), scale


def expand_groups(scale: Tensor, group: int, k: int) -> Tensor:
    """(N, G) group scales -> (N, K) per-weight scales (the last group may be short)."""
    return scale.repeat_interleave(group, dim=1)[:, :k]


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """q * scale in float32 (scale broadcasts; per-channel scales should be shaped (N, 1))."""
    return q.float() * scale


def pack_int4(q: Tensor) -> Tensor:
    """(N, K) int8 values in [-8, 7] -> (N, ceil(K/2)) uint8, element 2j in the low nibble."""
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int4 takes int8 values, got {q.dtype}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("pack_int4: values must lie in [-8, 7]")
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(p: Tensor, k: int) -> Tensor:
    """Inverse of `pack_int4`: (N, ceil(K/2)) uint8 -> (N, K) int8."""
    lo = (p & 0xF).to(torch.int8)
    hi = (p >> 4).to(torch.int8)
    q = torch.stack([lo, hi], dim=-1).flatten(-2)[..., :k]
    return torch.where(q > 7, q - 16, q)


def token_scale(x2d: Tensor, bits: int | str) -> Tensor:
    """Dynamic per-row (per-token) activation scale of a (M, K) matrix -> (M, 1)."""
    return scale_from_amax(x2d.detach().abs().amax(dim=1, keepdim=True), bits)


def fake_quant(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize with a straight-through gradient for x (Bengio et al. 2013)."""
    q = qmax(bits)
    y = torch.clamp(torch.round(x / scale), -q, q) * scale
    return x + (y - x).detach()
