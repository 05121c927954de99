"""Temporal feature maintenance (Huang et al. 2024, TFMQ-DM).

The time-embedding path of a denoiser depends on the time step alone, and a sampler visits a
finite set of time steps. So the path's output is computed once per step in full precision and
cached (no quantization error and no run-time cost on the temporal features), and the layers that
consume the embedding get one activation scale per time step (finite-set calibration) instead of
one scale for all steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import TimeContext


class TimeCapture:
    """Forward pre-hook on the net: stores the call's time steps (B,) in a `TimeContext`."""

    def __init__(self, context: TimeContext):
        self.context = context

    def __call__(self, _module, args, kwargs):
        x = args[0]
        t = args[1] if len(args) > 1 else kwargs["t"]
        self.context.t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0])


def install_time_context(net: nn.Module) -> TimeContext:
    """Attach (once) a TimeContext to ``net`` and the hook that fills it on every call."""
    ctx = getattr(net, "fewstep_time_context", None)
    if ctx is None:
        ctx = TimeContext()
        net.register_forward_pre_hook(TimeCapture(ctx), with_kwargs=True)
        object.__setattr__(net, "fewstep_time_context", ctx)
    return ctx


class CachedTimeEmbedding(nn.Module):
    """Wraps the time MLP: rows whose time step is cached return the stored full-precision output.

    The key is the net time of each row (from the TimeContext), matched exactly; rows at other
    time steps (another grid, another step count) go through the wrapped full-precision module.
    """

    def __init__(self, inner: nn.Module, t_values: Tensor, outputs: Tensor, context: TimeContext):
        super().__init__()
        self.inner = inner
        self.register_buffer("t_values", t_values.float().clone())  # (T,)
        self.register_buffer("outputs", outputs.float().clone())  # (T, E)
        self.context = context
        self.hits = 0

    @classmethod
    @torch.no_grad()
    def build(cls, inner: nn.Module, in_dim: int, t_values: Tensor, embed, context: TimeContext):
        """Cache ``inner(embed(t))`` for each t in ``t_values`` (net time)."""
        t = t_values.float()
        out = inner(embed(t, in_dim)) if len(t) else torch.zeros(0, 0)
        return cls(inner, t, out, context)

    def forward(self, e: Tensor) -> Tensor:
        t = self.context.t
        if t is None or t.shape[0] != e.shape[0] or not len(self.t_values):
            return self.inner(e)
        match = t[:, None] == self.t_values[None, :].to(t.device)  # (B, T)
        hit = match.any(dim=1)
        out = torch.empty(e.shape[0], self.outputs.shape[1], device=e.device, dtype=e.dtype)
        if hit.any():
            out[hit] = self.outputs[match[hit].float().argmax(dim=1)].to(e.dtype)
            self.hits += int(hit.sum())
        if not hit.all():
            out[~hit] = self.inner(e[~hit]).to(e.dtype)
        return out
