"""TSDiff's denoising backbone: residual bidirectional S4 layers over (B, C, L) sequences.

After Kollovieh et al. 2023 (TSDiff, Sec. 3 / App. B: an S4-based residual network with a diffusion
time embedding). The state-space layer is S4D (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"): a diagonal complex SSM with S4D-Lin initialisation,
zero-order-hold discretisation and its length-L kernel applied by FFT convolution, run forwards and
backwards in time (bidirectional, since the denoiser sees the whole window at once).

Contract (same as fewstep's image nets): ``net(x, t, cond=None) -> same shape as x`` with
t on a 0..1000 scale; ``cond`` is optional (B, cond_channels, L) covariates (e.g. time features).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from fewstep.core.nets.embeddings import timestep_embedding
from torch import Tensor, nn


@dataclass(frozen=True)
class TSDiffNetConfig:
    """Backbone size: ``channels`` = 1 + number of lags, ``length`` = context + prediction length."""

    channels: int = 1
    length: int = 64
    hidden: int = 64
    layers: int = 3
    state: int = 32  # S4D state size N (N/2 complex conjugate pairs)
    cond_channels: int = 0
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("channels", "length", "hidden", "layers", "state"):
            if getattr(self, name) < 1:
                raise ValueError(f"TSDiffNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.state % 2:
            raise ValueError(f"TSDiffNetConfig.state={self.state} must be even (complex conjugate pairs)")
        if self.cond_channels < 0 or not 0 <= self.dropout < 1:
            raise ValueError("TSDiffNetConfig: cond_channels must be >= 0 and dropout in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TSDiffNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TSDiffNetConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


class S4D(nn.Module):
    """Diagonal state-space layer (S4D-Lin, Gu et al. 2022, Eq. 5-6), bidirectional, per channel.

    x' = A x + B u, y = C x + D u with A = -exp(log_A_real) + i A_imag diagonal; ZOH discretisation
    gives the kernel K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)), l = 0..L-1.
    """

    def __init__(self, hidden: int, state: int, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        n = state // 2
        h2 = 2 * hidden  # one kernel per direction
        log_dt = torch.rand(h2) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(h2, n)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n).float().repeat(h2, 1))
        self.C = nn.Parameter(torch.randn(h2, n, 2) * 0.5**0.5)  # complex as (re, im)
        self.D = nn.Parameter(torch.randn(hidden))
        self.hidden = hidden

    def kernel(self, length: int) -> Tensor:
        """(2H, L) real convolution kernel."""
        dt = torch.exp(self.log_dt)[:, None]  # (2H, 1)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag  # (2H, N/2)
        dtA = A * dt
        C = torch.view_as_complex(self.C) * (torch.exp(dtA) - 1.0) / A
        powers = torch.exp(dtA[:, :, None] * torch.arange(length, device=A.device))  # (2H, N/2, L)
        return 2.0 * torch.einsum("hn,hnl->hl", C, powers).real

    def forward(self, u: Tensor) -> Tensor:  # u: (B, H, L)
        """Forward kernel on u plus backward kernel on u reversed in time; FFT convolution of length 2L."""
        L = u.shape[-1]
        k = self.kernel(L)
        kf = torch.fft.rfft(k, n=2 * L)  # (2H, L+1)
        uf = torch.fft.rfft(torch.cat([u, u.flip(-1)], dim=1), n=2 * L)  # (B, 2H, L+1)
        y = torch.fft.irfft(uf * kf, n=2 * L)[..., :L]  # (B, 2H, L)
        y_fwd, y_bwd = y[:, : self.hidden], y[:, self.hidden :].flip(-1)
        return y_fwd + y_bwd + u * self.D[:, None]


class ResidualS4Block(nn.Module):
    """LayerNorm -> (+ time embedding) -> bidirectional S4D -> GELU -> GLU channel mix, residual."""

    def __init__(self, hidden: int, state: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.time = nn.Linear(hidden, hidden)
        self.s4 = S4D(hidden, state)
        self.mix = nn.Conv1d(hidden, 2 * hidden, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x: (B, H, L), emb: (B, H)
        h = self.norm(x.transpose(1, 2)).transpose(1, 2) + self.time(emb)[:, :, None]
        h = F.gelu(self.s4(h))
        h = F.glu(self.mix(self.drop(h)), dim=1)
        return x + h


class TSDiffNet(nn.Module):
    """TSDiff S4 backbone: input projection, residual S4 blocks with a time embedding, zero-init output."""

    def __init__(self, config: TSDiffNetConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.inp = nn.Conv1d(config.channels, h, 1)
        self.cond = nn.Conv1d(config.cond_channels, h, 1) if config.cond_channels else None
        self.temb = nn.Sequential(nn.Linear(h, 2 * h), nn.SiLU(), nn.Linear(2 * h, h))
        self.blocks = nn.ModuleList(ResidualS4Block(h, config.state, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(h)
        self.out = nn.Conv1d(h, config.channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        c = self.config
        if x.ndim != 3 or x.shape[1] != c.channels or x.shape[2] != c.length:
            raise ValueError(
                f"TSDiffNet expects x of shape (B, {c.channels}, {c.length}) (target + lags, context + prediction "
                f"length), got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        h = self.inp(x)  # (B, H, L)
        if self.cond is not None:
            if cond is None or cond.shape != (x.shape[0], c.cond_channels, c.length):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"TSDiffNet expects cond of shape (B, {c.cond_channels}, {c.length}), got {got}")
            h = h + self.cond(cond)
        emb = self.temb(timestep_embedding(t, c.hidden))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.norm(h.transpose(1, 2)).transpose(1, 2))


NET_ENTRY = (TSDiffNetConfig, TSDiffNet)  # the ``fewstep.nets`` entry point ("tsdiff_s4")
