"""Matmul back ends for `QuantLayer`: the float reference, torch._int_mm, FP8 torch._scaled_mm and
fused Triton kernels. Each computes (q_x @ q_w^T) * r * s_w (or x @ deq(q_w)^T for weight-only).

"auto" picks per device from measurements (docs/benchmarks/compression.md): on the CPU int8
``torch._int_mm``; on CUDA FP8 ``torch._scaled_mm`` for fp8 weights, the Triton int8 kernel with the
rescale fused into its epilogue for int8/int4 with activations, the Triton dequantizing kernel for
weight-only, and the reference where a kernel's shape constraints are not met.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def triton_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def fp8_available(device_index: int = 0) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device_index) >= (8, 9)


def choose(layer, rows: Tensor) -> str:
    """The backend "auto" resolves to for this layer and input."""
    cuda = rows.is_cuda
    if layer.act == "none":
        return "triton" if cuda and triton_available() else "reference"
    if layer.weight_format == "fp8":
        return "scaled_mm" if cuda and fp8_available(rows.device.index or 0) else "reference"
    if cuda:
        return "triton" if triton_available() else "int_mm"
    return "int_mm"


def run_matmul(layer, rows: Tensor, qx: Tensor | None, r: Tensor | None) -> Tensor:
    """(M, N) output of the layer's matmul, bias included."""
    y, has_bias = _matmul(layer, rows, qx, r)
    if layer.bias is not None and not has_bias:
        y = y + layer.bias.to(y.dtype)
    return y


def _matmul(layer, rows: Tensor, qx: Tensor | None, r: Tensor | None) -> tuple[Tensor, bool]:
    backend = layer.backend if layer.backend != "auto" else choose(layer, rows)
    m, k, n = rows.shape[0], layer.in_features, layer.out_features
    if backend == "scaled_mm" and rows.is_cuda and qx is not None and layer.weight_format == "fp8":
        if k % 16 == 0 and n % 16 == 0:
            return _scaled_mm_fp8(layer, qx, r, m), True  # bias already added
    if layer.group and qx is not None and backend in ("int_mm", "triton"):
        return _grouped_int_mm(layer, qx, r), False
    if backend == "triton" and rows.is_cuda and triton_available() and not layer.group:
        from . import triton_kernels

        if qx is None:
            return triton_kernels.weight_only_mm(rows, layer), False
        if layer.weight_format != "fp8":
            return triton_kernels.int8_scaled_mm(qx, layer, r.expand(m, 1).float(), rows.dtype), False
    if backend in ("int_mm", "triton") and qx is not None and layer.weight_format != "fp8":
        # k == 1: CPU _int_mm misreads the (1, N) view of a (N, 1) weight (strides (1, 1)).
        if (not rows.is_cuda and k > 1) or (m > 16 and k % 8 == 0 and n % 8 == 0):
            acc = torch._int_mm(qx, layer.int_weight().t())  # (M, N) int32
            return acc.float() * r.float() * layer.w_scale[None, :], False
    return reference(layer, rows, qx, r), False


def reference(layer, rows: Tensor, qx: Tensor | None, r: Tensor | None) -> Tensor:
    """The numerics contract in float32 (exact integer products up to 2^24), without the bias."""
    if qx is None:
        w = layer.int_weight().to(rows.dtype) * layer.scale_matrix().to(rows.dtype)
        return rows @ w.t()
    if layer.group:
        return (qx.float() @ (layer.int_weight().float() * layer.scale_matrix()).t()) * r.float()
    acc = qx.float() @ layer.int_weight().float().t()
    return acc * r.float() * layer.w_scale[None, :]


def _grouped_int_mm(layer, qx: Tensor, r: Tensor) -> Tensor:
    """Group-wise weight scales: one int8 GEMM (int32 accumulation) per group of K, rescaled and summed."""
    qw, g, k = layer.int_weight(), layer.group, layer.in_features
    m, n = qx.shape[0], layer.out_features
    out = torch.zeros(m, n, device=qx.device)
    for i, k0 in enumerate(range(0, k, g)):
        a, b = qx[:, k0 : k0 + g].contiguous(), qw[:, k0 : k0 + g].contiguous()
        if b.shape[1] > 1 and (not qx.is_cuda or (m > 16 and b.shape[1] % 8 == 0 and n % 8 == 0)):
            part = torch._int_mm(a, b.t()).float()
        else:
            part = a.float() @ b.float().t()
        out += part * layer.w_scale[:, i][None, :]
    return out * r.float()


def _scaled_mm_fp8(layer, qx: Tensor, r: Tensor, m: int) -> Tensor:
    """FP8 e4m3 GEMM with row-wise scales on both sides (per-token x per-channel), bf16 out."""
    sa = r.float().expand(m, 1).contiguous()
    sb = layer.w_scale[None, :].float().contiguous()
    bias = None if layer.bias is None else layer.bias.to(torch.bfloat16)
    try:
        # Bias fused into the GEMM epilogue; fast accumulation as torchao's float8 forward uses.
        return torch._scaled_mm(qx, layer.qweight.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16,
                                use_fast_accum=True)
    except RuntimeError as e:
        raise RuntimeError(
            f"FP8 GEMM failed for {layer.extra_repr()}: a {tuple(qx.shape)} {qx.dtype} stride {qx.stride()}, "
            f"scale_a {tuple(sa.shape)}, scale_b {tuple(sb.shape)}: {e}"
        ) from e
