"""Data-free calibration sets for diffusion quantization and the activation-range observers.

The activations of a denoiser change with the time step, so where the calibration inputs come from
decides the quantized model's quality (Shang et al. 2023, PTQ4DM; Li et al. 2023, Q-Diffusion):
- "trajectory": every step of full-precision sampling trajectories, i.e. time steps uniformly
  spread over the sampler's grid (Q-Diffusion, Sec. 3.2 "time step-aware calibration").
- "ptq4dm": one step per trajectory, its index drawn from a normal over the trajectory
  (PTQ4DM, Sec. 4.3 "normally distributed time-step calibration", NDTC).
- "single": all trajectories at one step: the naive baseline both papers show fails.
Inputs x_t are produced by the full-precision model itself from Gaussian noise: no dataset needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import QuantConfig
from .qtensor import qmax, scale_from_amax

MAX_SAMPLES = 1 << 16  # values kept per observer group for the clipping search


@dataclass
class CalibrationSet:
    """Net-level inputs (x, net time, cond) recorded on full-precision sampling trajectories."""

    x: Tensor  # (R, *sample_shape), already input-scaled as the net sees it
    t: Tensor  # (R,) net time (0..1000 scale)
    cond: Tensor | None  # (R, ...) or None

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, size: int = 256) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        for i in range(0, len(self), size):
            c = None if self.cond is None else self.cond[i : i + size]
            yield self.x[i : i + size], self.t[i : i + size], c


def record_steps(config: QuantConfig, n: int, steps: int, generator: torch.Generator) -> Tensor:
    """(n,) step index recorded per trajectory, or -1 for "every step"."""
    if config.calibration == "trajectory":
        return torch.full((n,), -1, dtype=torch.long)
    if config.calibration == "single":
        return torch.full((n,), round(config.single_step * (steps - 1)), dtype=torch.long)
    frac = config.ndtc_mean + config.ndtc_std * torch.randn(n, generator=generator, dtype=torch.float64)
    return (frac.clamp(0, 1) * (steps - 1)).round().long()


@torch.no_grad()
def calibration_set(denoiser, config: QuantConfig) -> CalibrationSet:
    """Run the full-precision sampler and keep the net inputs at the configured steps."""
    from ..solvers import sample

    if denoiser.sample_shape is None:
        raise ValueError("calibration needs the Denoiser's sample_shape (set it when building the Denoiser)")
    device = next(denoiser.net.parameters()).device
    g = torch.Generator().manual_seed(config.seed)
    n, steps = config.calib_samples, config.calib_steps
    x_T = torch.randn((n, *denoiser.sample_shape), generator=g).to(device)
    cond = torch.randint(0, denoiser.num_classes, (n,), generator=g).to(device) if denoiser.num_classes else None
    when = record_steps(config, n, steps, g).to(device)
    kept: list[tuple[Tensor, Tensor, Tensor | None]] = []
    calls = [0]

    def hook(_module, args, kwargs):
        x, t = args[0], args[1]
        c = args[2] if len(args) > 2 else kwargs.get("cond")
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])
        reps = x.shape[0] // n  # 2 under classifier-free guidance (cond rows, then null rows)
        rows = ((when == calls[0]) | (when < 0)).repeat(reps)
        if rows.any():
            kept.append((x[rows].detach(), t[rows].detach(), None if c is None else c[rows].detach()))
        calls[0] += 1

    was_training = denoiser.training
    denoiser.eval()
    handle = denoiser.net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sample(denoiser, x_T, config.calib_solver, steps, "uniform", cond=cond, generator=g)
    finally:
        handle.remove()
        denoiser.train(was_training)
    if calls[0] != steps:
        raise ValueError(
            f"calib_solver={config.calib_solver!r} made {calls[0]} network calls for {steps} steps; "
            "use a one-evaluation-per-step solver for calibration (ddim, euler, dpmpp_2m)"
        )
    x = torch.cat([k[0] for k in kept])
    t = torch.cat([k[1] for k in kept])
    c = None if kept[0][2] is None else torch.cat([k[2] for k in kept])
    return CalibrationSet(x, t, c)


class RangeObserver:
    """Collects |activation| statistics of one layer input, per channel group and optionally per t.

    groups: channel ranges [(start, stop), ...] that get their own scale (one group = per tensor).
    channel_dim: 1 for conv inputs (B, C, H, W), -1 for linear inputs (..., K).
    """

    def __init__(self, groups: list[tuple[int, int]], channel_dim: int, per_t: bool, generator: torch.Generator):
        self.groups, self.channel_dim, self.per_t = groups, channel_dim, per_t
        self.g = generator
        self.samples: dict[tuple[int, float | None], list[Tensor]] = {}
        self.amax: dict[tuple[int, float | None], Tensor] = {}

    def _add(self, key, v: Tensor) -> None:
        v = v.detach().abs().flatten().float().cpu()
        self.amax[key] = torch.maximum(self.amax.get(key, torch.zeros(())), v.max())
        if v.numel() > 4096:
            v = v[torch.randint(0, v.numel(), (4096,), generator=self.g)]
        self.samples.setdefault(key, []).append(v)

    def update(self, x: Tensor, t: Tensor) -> None:
        x = x.movedim(self.channel_dim, -1)  # (..., C), batch first
        keys = [None] if not self.per_t else t.unique().tolist()
        for key_t in keys:
            xt = x if key_t is None else x[t == key_t]
            for gi, (a, b) in enumerate(self.groups):
                self._add((gi, key_t), xt[..., a:b])

    def _scale(self, key, method: str) -> Tensor:
        amax = self.amax[key]
        v = torch.cat(self.samples[key])[:MAX_SAMPLES]
        if method == "minmax" or amax == 0:
            return scale_from_amax(amax, 8)
        if method == "percentile":
            return scale_from_amax(torch.quantile(v, 0.9999), 8)
        # "mse": the clip range (a fraction of amax) minimising the quantize-dequantize error.
        v = torch.cat([v, amax.reshape(1)])
        best, best_err = amax, float("inf")
        for frac in torch.linspace(0.3, 1.0, 36):
            s = scale_from_amax(amax * frac, 8)
            err = (v - torch.clamp(torch.round(v / s), -qmax(8), qmax(8)) * s).pow(2).mean().item()
            if err < best_err:
                best, best_err = amax * frac, err
        return scale_from_amax(best, 8)

    def channel_scale(self, channels: int, method: str, key_t=None) -> Tensor:
        """(C,) scale: each channel gets its group's scale."""
        out = torch.empty(channels)
        for gi, (a, b) in enumerate(self.groups):
            out[a:b] = self._scale((gi, key_t), method)
        return out

    def t_table(self, method: str) -> tuple[Tensor, Tensor]:
        """(t values, per-t scale) for finite-set calibration (one group)."""
        ts = sorted({k[1] for k in self.amax})
        return torch.tensor(ts), torch.stack([self._scale((0, t), method) for t in ts])


@torch.no_grad()
def observe(
    net: nn.Module,
    calib: CalibrationSet,
    observers: dict[str, RangeObserver],
    batch: int = 256,
) -> None:
    """Run the full-precision net over the calibration set, feeding each observed layer's input."""
    modules = dict(net.named_modules())
    current_t: list[Tensor] = []
    handles = []
    for name, obs in observers.items():
        def hook(_m, args, obs=obs):
            x = args[0]
            t = current_t[0]
            if x.shape[0] != t.shape[0]:  # token-major layouts: rows are (B * N)
                t = t.repeat_interleave(x.shape[0] // t.shape[0])
            obs.update(x, t)

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        for x, t, c in calib.batches(batch):
            current_t[:] = [t]
            net(x, t, c)
    finally:
        for h in handles:
            h.remove()
