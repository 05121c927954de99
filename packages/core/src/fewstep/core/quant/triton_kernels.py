"""Fused Triton GEMMs for quantized layers on CUDA (imported only when CUDA and Triton are present).

- ``int8_scaled_mm``: C = (A_int8 @ B_int8^T) * a_scale[m] * b_scale[n], int32 accumulation on the
  int8 tensor cores, the rescale fused into the epilogue (one pass over C instead of three).
  B may be packed int4 (two values per byte, low nibble first): it is unpacked in registers, so
  W4A8 reads half the weight bytes of W8A8.
- ``weight_only_mm``: C = A @ (B * b_scale[n])^T for bf16/fp16 A and int8 or packed int4 B,
  dequantizing B tiles in registers (W8A16 / W4A16).
Both are registered with ``torch.library.triton_op`` so ``torch.compile`` traces through them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

CONFIGS = [
    triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (64, 128, 64, 4, 4),
        (128, 64, 128, 4, 3),
        (64, 64, 128, 4, 3),
        (32, 64, 128, 4, 3),
    ]
]


@triton.jit
def _load_b(b_ptr, offs_n, offs_k, N, K, stride_bn, INT4: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """(BK, BN) tile of B^T; B is (N, K) int8, or (N, ceil(K/2)) uint8 packed int4."""
    if INT4:
        mask = (offs_n[None, :] < N) & (offs_k[:, None] < K)
        p = tl.load(b_ptr + offs_n[None, :] * stride_bn + (offs_k // 2)[:, None], mask=mask, other=0).to(tl.int32)
        nib = tl.where((offs_k[:, None] % 2) == 0, p & 15, (p >> 4) & 15)
        return ((nib ^ 8) - 8).to(tl.int8)  # sign-extend a 4-bit two's complement value
    mask = (offs_n[None, :] < N) & (offs_k[:, None] < K)
    return tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None], mask=mask, other=0).to(tl.int8)


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "INT4"])
@triton.jit
def _int8_mm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                    INT4: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        b = _load_b(b_ptr, offs_n, offs_k, N, K, stride_bn, INT4, BK, BN)
        acc += tl.dot(a, b)
    sa = tl.load(sa_ptr + offs_m, mask=offs_m < M, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    c = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], c.to(c_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "INT4"])
@triton.jit
def _weight_only_kernel(a_ptr, b_ptr, c_ptr, sb_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                        INT4: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        b = _load_b(b_ptr, offs_n, offs_k, N, K, stride_bn, INT4, BK, BN)
        acc += tl.dot(a, b.to(a.dtype))
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    c = acc * sb[None, :]
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], c.to(c_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _grid(meta, m, n):
    return (triton.cdiv(m, meta["BM"]), triton.cdiv(n, meta["BN"]))


@torch.library.triton_op("fewstep::int8_scaled_mm", mutates_args=())
def int8_scaled_mm_op(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, k: int, int4: bool,
                      out_dtype: torch.dtype) -> Tensor:
    m, n = a.shape[0], b.shape[0]
    c = torch.empty((m, n), device=a.device, dtype=out_dtype)
    torch.library.wrap_triton(_int8_mm_kernel)[lambda meta: _grid(meta, m, n)](
        a, b, c, a_scale, b_scale, m, n, k, a.stride(0), b.stride(0), c.stride(0), INT4=int4)
    return c


@torch.library.triton_op("fewstep::weight_only_mm", mutates_args=())
def weight_only_mm_op(a: Tensor, b: Tensor, b_scale: Tensor, k: int, int4: bool) -> Tensor:
    m, n = a.shape[0], b.shape[0]
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    torch.library.wrap_triton(_weight_only_kernel)[lambda meta: _grid(meta, m, n)](
        a, b, c, b_scale, m, n, k, a.stride(0), b.stride(0), c.stride(0), INT4=int4)
    return c


def int8_scaled_mm(qx: Tensor, layer, r: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """QuantLayer matmul with int8 activations: (M, K) int8 x packed weights -> (M, N)."""
    return int8_scaled_mm_op(qx.contiguous(), layer.qweight, r.reshape(-1).contiguous(),
                             layer.w_scale.float().contiguous(), layer.in_features,
                             layer.weight_format == "int4", out_dtype)


def weight_only_mm(rows: Tensor, layer) -> Tensor:
    """QuantLayer matmul for weight-only schemes (A stays in its float dtype, bf16 recommended)."""
    a = rows if rows.dtype in (torch.bfloat16, torch.float16) else rows.to(torch.bfloat16)
    out = weight_only_mm_op(a.contiguous(), layer.qweight, layer.w_scale.float().contiguous(), layer.in_features,
                            layer.weight_format == "int4")
    return out.to(rows.dtype)
