"""Differentiable unit masks: hard-concrete gates (Louizos et al. 2018) applied by forward hooks.

EcoDiff (Zhang et al. 2024, differentiable masking) learns one mask value per structural unit and multiplies the
unit's activations by it. Here each unit has a logit ``log_alpha``; a training gate is a stretched,
clamped concrete sample (Louizos et al. 2018, "Learning Sparse Neural Networks through L0
Regularization", the hard concrete distribution):

    s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  u ~ U(0, 1)
    z = clamp(s (zeta - gamma) + gamma, 0, 1),             gamma = -0.1, zeta = 1.1

so gates reach exactly 0 and 1 while staying differentiable in between; beta is the temperature.
The probability that a gate is non-zero, P(z > 0) = sigmoid(log_alpha - beta log(-gamma / zeta))
(their expected L0 norm), is the differentiable "kept" share the sparsity term drives to the target.
``straight_through`` gives binary gates (a plan) in the forward pass with the soft gates' gradient.

Masks multiply the input of each unit set's consumer (``UnitSet.consumer``) along its channel axis,
through a forward pre-hook; ``remove_masks(net)`` takes every hook off again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .units import UnitSet

GAMMA, ZETA = -0.1, 1.1  # hard-concrete stretch interval (Louizos et al. 2018)
HOOKS_ATTR = "_fewstep_mask_hooks"


class UnitMasks(nn.Module):
    """One learnable logit per unit of every unit set (hard-concrete gates)."""

    def __init__(self, units: list[UnitSet], init: float = 3.0, temperature: float = 2.0 / 3.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 (Louizos et al. use 2/3)")
        self.units = list(units)
        self.temperature = float(temperature)
        self.logits = nn.ParameterList(nn.Parameter(torch.full((u.count,), float(init))) for u in units)
        # Parameters behind each unit: the sparsity term counts parameters, not units.
        self.register_buffer("_params", torch.tensor([p for u in units for p in u.params], dtype=torch.float32))

    def flat(self) -> Tensor:
        """All logits in unit-set order, (total units,)."""
        return torch.cat(list(self.logits))

    def gates(self, generator: torch.Generator | None = None, noise: bool = True) -> list[Tensor]:
        """One gate vector per unit set: a hard-concrete sample, or the deterministic gate (noise=False)."""
        out = []
        for log_alpha in self.logits:
            if noise:
                u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
                s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
            else:
                s = torch.sigmoid(log_alpha)  # Louizos et al., test-time estimator
            out.append((s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0))
        return out

    def kept_share(self) -> Tensor:
        """Expected share of prunable parameters whose gate is non-zero (Louizos et al.'s expected L0)."""
        p_open = torch.sigmoid(self.flat() - self.temperature * math.log(-GAMMA / ZETA))
        return (p_open * self._params).sum() / self._params.sum()


def straight_through(soft: list[Tensor], keep: list[Tensor]) -> list[Tensor]:
    """Binary gates ``keep`` (0/1 per unit) in the forward pass, the gradient of ``soft`` backward."""
    return [k.to(s.dtype) + s - s.detach() for s, k in zip(soft, keep)]


class MaskHooks:
    """Forward pre-hooks that scale each consumer's input channels by its unit gates."""

    def __init__(self, net: nn.Module, units: list[UnitSet]):
        self.units = list(units)
        self.channel_gates: dict[str, Tensor | None] = {u.path: None for u in units}
        self._net = net
        self._handles = [
            net.get_submodule(u.consumer).register_forward_pre_hook(self._hook(u)) for u in self.units
        ]
        object.__setattr__(net, HOOKS_ATTR, [*getattr(net, HOOKS_ATTR, []), self])

    def _hook(self, u: UnitSet):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            g = self.channel_gates[u.path]
            if g is None:  # masks off: the plain net
                return None
            x = args[0]
            shape = [1] * x.ndim
            shape[u.channel_dim] = -1
            return (x * g.to(x.dtype).view(shape), *args[1:])

        return hook

    def set(self, gates: list[Tensor] | None) -> None:
        """Per-unit gates, one vector per unit set (in ``units`` order); None switches masks off."""
        if gates is None:
            self.channel_gates = {u.path: None for u in self.units}
            return
        if len(gates) != len(self.units):
            raise ValueError(f"got {len(gates)} gate vectors for {len(self.units)} unit sets")
        self.channel_gates = {u.path: u.expand(g) for u, g in zip(self.units, gates)}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        rest = [m for m in getattr(self._net, HOOKS_ATTR, []) if m is not self]
        object.__setattr__(self._net, HOOKS_ATTR, rest)


def attach_masks(net: nn.Module, units: list[UnitSet], gates: list[Tensor] | None = None) -> MaskHooks:
    """Hook masks onto ``net`` (all gates open unless ``gates`` is given); ``.set`` changes them."""
    hooks = MaskHooks(net, units)
    hooks.set(gates)
    return hooks


def plan_gates(units: list[UnitSet], plan: dict[str, list[int]], device=None) -> list[Tensor]:
    """Binary per-unit gates of a plan: 1 for kept units, 0 for removed ones (unnamed sets: all 1)."""
    out = []
    for u in units:
        g = torch.ones(u.count, device=device)
        if u.path in plan:
            g.zero_()
            g[torch.as_tensor(list(plan[u.path]), dtype=torch.long)] = 1.0
        out.append(g)
    return out


def remove_masks(net: nn.Module) -> nn.Module:
    """Take every mask hook off ``net``: it computes as the plain net again."""
    for hooks in list(getattr(net, HOOKS_ATTR, [])):
        hooks.remove()
    return net
