"""What pruning buys: parameter counts and FLOPs per network evaluation."""

from __future__ import annotations

from typing import Self

import torch
from torch import nn

from ..denoiser import Denoiser


def param_count(module: nn.Module) -> int:
    """Number of parameters (a Denoiser counts its net's)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def flops(den: Denoiser, batch: int = 1) -> int:
    """FLOPs of one network evaluation on ``batch`` samples (matmuls, convolutions, attention).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2 FLOPs); elementwise
    work (norms, activations) is not counted. Unguided, at t = t_max/2 (cost does not depend on t).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .search import sample_shape

    p = next(den.net.parameters())
    x = torch.zeros(batch, *sample_shape(den), device=p.device, dtype=p.dtype)
    cond = torch.zeros(batch, dtype=torch.long, device=p.device) if den.num_classes > 0 else None
    t = torch.full((batch,), 0.5 * float(den.schedule.t_max), dtype=torch.float64)
    was = den.training
    den.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            den(x, t, cond, guidance=1.0)
    finally:
        den.train(was)
    return int(counter.get_total_flops())


class SavedTensorBytes:
    """Bytes autograd keeps for the backward pass, counted while active (distinct storages).

    ``with SavedTensorBytes(ignore=net.parameters()) as m: loss = f(...)`` then ``m.bytes``. Uses
    ``torch.autograd.graph.saved_tensors_hooks``; weights passed in ``ignore`` are not counted (they
    live anyway). Tensors saved inside a ``torch.utils.checkpoint`` segment are dropped and
    recomputed, so they do not reach these hooks; the segment's inputs (for the search, each x_t)
    are kept by the checkpoint itself and are not counted here either.
    """

    def __init__(self, ignore=()):
        self._ignore = {p.untyped_storage().data_ptr() for p in ignore}
        self._seen: set[int] = set()
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self._ignore and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += s.nbytes()
        return t

    def __enter__(self) -> Self:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
