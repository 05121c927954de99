"""`QuantLayer`: a Linear or Conv2d whose weights are stored packed at low precision and whose
matmul runs on real integer / FP8 kernels.

One formula covers every scheme (symmetric quantization, Jacob et al. 2018 without zero points):

    q_x = round(x / (r * s_in))                     activations, r a per-row scale, s_in per column
    y   = (q_x @ q_w^T) * r[:, None] * s_w[None, :] + b

- ``s_in`` (K,) is a static, calibrated per-input-column scale. It is folded into the weight before
  the weight is quantized (q_w quantizes W * s_in), so it costs nothing at run time. A per-tensor
  scale is a constant ``s_in``; Q-Diffusion's split shortcut quantization (Li et al. 2023, Sec. 3.3)
  is ``s_in`` with one value for each half of a concatenated U-Net skip input.
- ``r`` (M,) is 1 for static schemes, the row's own amax for dynamic per-token schemes, or the
  calibrated scale of the row's time step for TFMQ's finite-set calibration (Huang et al. 2024).
- Weight-only schemes skip the activation side: y = x @ deq(q_w)^T + b.
A Conv2d with backend "int_mm" / "triton" / "reference" runs as the same matmul over im2col patches
(a 1x1 conv over channels-last pixels); with "auto" / "dequant" it runs the platform's conv kernel on
the same integer grids (see `conv_dequant`). Dynamic ("token") activations of a conv use one scale
per call for the whole input (a pixel belongs to several patches).

Backends (``layer.backend``, not saved): "reference" computes the formula in float32 from the
integer values (the numerics contract), "int_mm" uses ``torch._int_mm`` (CPU and CUDA), "triton"
the fused int8 / int4 kernels in ``fewstep.core.quant.triton_kernels`` (CUDA), "scaled_mm" FP8
``torch._scaled_mm`` (CUDA, sm >= 89), and "auto" picks the fastest available for the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import run_matmul
from .qtensor import (
    FP8,
    expand_groups,
    pack_int4,
    quantize_fp8,
    quantize_int,
    quantize_weight,
    scale_from_amax,
    token_scale,
    unpack_int4,
)

WEIGHT_FORMATS = ("int8", "int4", "fp8")
ACT_MODES = ("none", "static", "token", "per_t")
BACKENDS = ("auto", "reference", "dequant", "int_mm", "triton", "scaled_mm")


class TimeContext:
    """Holds the current call's time steps (B,) so per-t layers can pick their row scales."""

    def __init__(self):
        self.t: Tensor | None = None


class QuantLayer(nn.Module):
    """A quantized Linear (kind="linear") or Conv2d (kind="conv"); see the module docstring."""

    def __init__(
        self,
        kind: str,
        out_features: int,
        in_features: int,
        *,
        weight_format: str,
        act: str,
        bias: bool,
        conv: dict[str, Any] | None = None,
        n_t: int = 0,
        group: int = 0,
    ):
        super().__init__()
        if kind not in ("linear", "conv"):
            raise ValueError(f"QuantLayer kind must be 'linear' or 'conv', got {kind!r}")
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
        if act not in ACT_MODES:
            raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
        if weight_format == "fp8" and act not in ("token", "none"):
            raise ValueError("fp8 weights pair with dynamic per-token fp8 activations (act='token') or none")
        self.kind, self.out_features, self.in_features = kind, out_features, in_features
        self.weight_format, self.act = weight_format, act
        self.conv = dict(conv or {})
        if group < 0 or group and weight_format == "fp8":
            raise ValueError(f"group={group}: use 0 (per channel) or a positive group size with int4/int8 weights")
        self.group = int(group)
        self.backend = "auto"
        self.time_context: TimeContext | None = None
        n, k = out_features, in_features
        if weight_format == "int4":
            qweight = torch.zeros(n, (k + 1) // 2, dtype=torch.uint8)
        elif weight_format == "fp8":
            qweight = torch.zeros(n, k, dtype=FP8)
        else:
            qweight = torch.zeros(n, k, dtype=torch.int8)
        self.register_buffer("qweight", qweight)
        self.register_buffer("w_scale", torch.ones(n, -(-k // group)) if group else torch.ones(n))
        self.register_buffer("bias", torch.zeros(n) if bias else None)
        self.register_buffer("in_scale", torch.ones(k) if act in ("static", "per_t") else None)
        self.register_buffer("t_values", torch.zeros(n_t) if act == "per_t" else None)
        self.register_buffer("t_scale", torch.ones(n_t) if act == "per_t" else None)

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def float_matrix(layer: nn.Module) -> Tensor:
        """The (N, K) weight matrix of a Linear or (groups=1) Conv2d."""
        return layer.weight.detach().reshape(layer.weight.shape[0], -1).float()

    @classmethod
    def from_float(
        cls,
        layer: nn.Linear | nn.Conv2d,
        *,
        weight_format: str,
        act: str,
        in_scale: Tensor | None = None,
        t_table: tuple[Tensor, Tensor] | None = None,
        group: int = 0,
    ) -> QuantLayer:
        """Quantize ``layer``; ``in_scale`` (K,) for static activations, ``t_table`` (t, scale) for per_t."""
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros":
                raise ValueError("QuantLayer handles Conv2d with groups=1 and zero padding only")
            conv = {
                "in_channels": layer.in_channels,
                "kernel_size": list(layer.kernel_size),
                "stride": list(layer.stride),
                "padding": list(layer.padding) if not isinstance(layer.padding, str) else layer.padding,
                "dilation": list(layer.dilation),
            }
            if isinstance(layer.padding, str):
                raise ValueError("QuantLayer needs numeric conv padding, not 'same'/'valid'")
            kind = "conv"
        elif isinstance(layer, nn.Linear):
            conv, kind = None, "linear"
        else:
            raise TypeError(f"QuantLayer quantizes nn.Linear and nn.Conv2d, not {type(layer).__name__}")
        w = cls.float_matrix(layer)
        n_t = 0 if t_table is None else len(t_table[0])
        q = cls(kind, w.shape[0], w.shape[1], weight_format=weight_format, act=act,
                bias=layer.bias is not None, conv=conv, n_t=n_t, group=group)
        q.to(layer.weight.device)
        if layer.bias is not None:
            q.bias.copy_(layer.bias.detach().float())
        if act in ("static", "per_t"):
            if in_scale is None:
                raise ValueError(f"act={act!r} needs a calibrated in_scale")
            q.in_scale.copy_(q.expand_in_scale(in_scale).to(q.in_scale))
        if act == "per_t":
            q.t_values.copy_(t_table[0].float())
            q.t_scale.copy_(t_table[1].float())
        q.set_weight(w)
        return q

    def expand_in_scale(self, s: Tensor) -> Tensor:
        """A per-input-channel scale (C,) or scalar -> per-column (K,) (conv columns are C x kh x kw)."""
        s = torch.as_tensor(s, dtype=torch.float32).flatten()
        if s.numel() == 1:
            return s.expand(self.in_features).clone()
        if self.kind == "conv" and s.numel() == self.conv["in_channels"]:
            return s.repeat_interleave(self.in_features // s.numel())
        if s.numel() != self.in_features:
            raise ValueError(f"in_scale has {s.numel()} values; expected 1, channels or {self.in_features}")
        return s

    def set_weight(self, w: Tensor) -> None:
        """Quantize a float (N, K) weight (with ``in_scale`` folded in) into the packed buffers."""
        if self.in_scale is not None:
            w = w * self.in_scale.to(w)[None, :]
        if self.weight_format == "fp8":
            q, s = quantize_weight(w, "fp8")
        else:
            q, s = quantize_weight(w, 4 if self.weight_format == "int4" else 8, self.group)
            if self.weight_format == "int4":
                q = pack_int4(q)
        self.qweight.copy_(q)
        self.w_scale.copy_(s)

    def set_weight_int(self, q: Tensor, scale: Tensor) -> None:
        """Store already-rounded integer weights (e.g. from AdaRound) with their per-row scales."""
        q = q.to(torch.int8)
        self.qweight.copy_(pack_int4(q) if self.weight_format == "int4" else q)
        self.w_scale.copy_(scale.float().reshape(self.w_scale.shape))

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves the buffers; `.to(dtype)` / `.half()` leave their storage formats alone
        (fp8 weights are floating point to torch, and fp32 scales must stay fp32)."""
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    # -- views ----------------------------------------------------------------------------------
    @property
    def bits(self) -> int | str:
        return {"int8": 8, "int4": 4, "fp8": "fp8"}[self.weight_format]

    def int_weight(self) -> Tensor:
        """(N, K) integer (int8) or fp8 weight values, unpacked."""
        if self.weight_format == "int4":
            return unpack_int4(self.qweight, self.in_features)
        return self.qweight

    def scale_matrix(self) -> Tensor:
        """Weight scales broadcastable against the (N, K) integer weight: (N, 1) or, grouped, (N, K)."""
        if self.group:
            return expand_groups(self.w_scale, self.group, self.in_features)
        return self.w_scale[:, None]

    def dequantized_weight(self) -> Tensor:
        """The effective float (N, K) weight, in_scale unfolded: what the layer multiplies by."""
        w = self.int_weight().float() * self.scale_matrix()
        if self.in_scale is not None:
            w = w / self.in_scale[None, :]
        return w

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.qweight, self.w_scale))

    # -- run time -----------------------------------------------------------------------------
    def to_rows(self, x: Tensor) -> tuple[Tensor, tuple]:
        """Input -> (M, K) matrix and what is needed to shape the output back."""
        if self.kind == "linear":
            if x.shape[-1] != self.in_features:
                raise ValueError(f"QuantLayer expects {self.in_features} input features, got {x.shape[-1]}")
            return x.reshape(-1, self.in_features), (x.shape[:-1],)
        c = self.conv
        if x.ndim != 4 or x.shape[1] != c["in_channels"]:
            raise ValueError(f"QuantLayer(conv) expects (B, {c['in_channels']}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        kh, kw = c["kernel_size"]
        (sh, sw), (ph, pw), (dh, dw) = c["stride"], c["padding"], c["dilation"]
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            rows = x.permute(0, 2, 3, 1).reshape(-1, self.in_features)  # channels-last pixels
        else:
            cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))  # (B, K, L)
            rows = cols.transpose(1, 2).reshape(-1, self.in_features)
        return rows, (b, ho, wo)

    def from_rows(self, y: Tensor, shape: tuple) -> Tensor:
        if self.kind == "linear":
            return y.reshape(*shape[0], self.out_features)
        b, ho, wo = shape
        return y.reshape(b, ho, wo, self.out_features).permute(0, 3, 1, 2).contiguous()

    def row_scale(self, rows: Tensor, nrows_per_batch: int) -> Tensor:
        """r (M, 1) for the activation modes that quantize."""
        if self.act == "token":
            fmt = "fp8" if self.weight_format == "fp8" else 8
            if self.kind == "conv":  # dynamic per-tensor: a pixel belongs to several im2col rows
                return scale_from_amax(rows.detach().abs().amax(), fmt).reshape(1, 1)
            return token_scale(rows, fmt)
        if self.act == "per_t":
            t = None if self.time_context is None else self.time_context.t
            if t is None:
                raise RuntimeError("a per-t QuantLayer was called without its time context; use quantize() models")
            idx = (t.float()[:, None] - self.t_values[None, :].to(t.device)).abs().argmin(dim=1)  # (B,)
            return self.t_scale[idx].repeat_interleave(nrows_per_batch)[:, None]
        return torch.ones(1, 1, device=rows.device)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "conv" and self.backend in ("auto", "dequant") and self.act != "per_t":
            return self.conv_dequant(x)
        rows, shape = self.to_rows(x)
        batch = x.shape[0] if x.ndim > 1 else 1
        y = self.matmul(rows, max(1, rows.shape[0] // max(1, batch)))  # bias included
        return self.from_rows(y.to(x.dtype), shape)

    def conv_dequant(self, x: Tensor) -> Tensor:
        """Conv2d over the integer grids: the input snapped to its int8/fp8 grid, the dequantized
        weight, and the platform's conv kernel (cuDNN / oneDNN). Equal to the im2col integer GEMM up
        to float summation order; PyTorch has no maintained int8 conv kernel outside the legacy
        torch.ao engine, and im2col + int GEMM is slower than this on both CPU and GPU
        (docs/benchmarks/compression.md)."""
        c = self.conv
        if x.ndim != 4 or x.shape[1] != c["in_channels"]:
            raise ValueError(f"QuantLayer(conv) expects (B, {c['in_channels']}, H, W), got {tuple(x.shape)}")
        w = self.dequantized_weight().reshape(self.out_features, c["in_channels"], *c["kernel_size"])
        if self.act != "none":
            per_ch = 1.0 if self.in_scale is None else self.in_scale.view(c["in_channels"], -1)[:, 0]
            r = self.row_scale(x.reshape(1, -1), 1).reshape(()) if self.act == "token" else 1.0
            s = (r * torch.as_tensor(per_ch, device=x.device, dtype=torch.float32)).reshape(1, -1, 1, 1)
            if self.weight_format == "fp8":
                x = quantize_fp8(x, s).float() * s
            else:
                x = quantize_int(x, s, 8).float() * s
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x.to(w.dtype), w, b, c["stride"], c["padding"], c["dilation"]).to(x.dtype)

    def matmul(self, rows: Tensor, rows_per_batch: int) -> Tensor:
        if self.act == "none":
            return run_matmul(self, rows, None, None)
        r = self.row_scale(rows, rows_per_batch)  # (M, 1) or (1, 1)
        denom = r if self.in_scale is None else r * self.in_scale[None, :].to(r.device)
        if self.weight_format == "fp8":
            qx = quantize_fp8(rows, denom)
        else:
            qx = quantize_int(rows, denom, 8)
        return run_matmul(self, rows, qx, r)

    def extra_repr(self) -> str:
        return (f"{self.kind}, {self.in_features}->{self.out_features}, weight={self.weight_format}"
                f"{f' (groups of {self.group})' if self.group else ''}, "
                f"act={self.act}, backend={self.backend}")

