"""Hard thresholding: from unit scores to a pruning plan that removes a target share of parameters.

EcoDiff (Zhang et al. 2024) ranks units by their learned mask values and removes the
lowest until the target sparsity is met. Units differ in size here (a DiT head holds more weights
than an MLP group), so the target is a share of the prunable *parameters*: units are removed in
ascending score order until the next one would overshoot the target, and that one too if it lands
closer. So ``|removed - target| <= the largest unit``. A layer always keeps at least one unit
(a unit that would empty its layer is skipped, not counted as the stop).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .physical import Plan
from .units import UnitSet, prunable_params


def check_ratio(ratio: float) -> float:
    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(
            f"ratio={ratio}: the share of prunable parameters to remove must lie strictly between 0 and 1 "
            "(e.g. 0.2 removes a fifth)"
        )
    return float(ratio)


def plan_from_scores(units: list[UnitSet], scores: list[Tensor], ratio: float) -> tuple[Plan, int]:
    """(plan keeping the high-score units, parameters removed) for removing ``ratio`` of prunable params."""
    check_ratio(ratio)
    if len(scores) != len(units) or any(s.numel() != u.count for s, u in zip(scores, units)):
        raise ValueError("need one score per unit, one score vector per unit set (in units order)")
    target = ratio * prunable_params(units)
    flat = [(float(s), i, j) for i, sc in enumerate(scores) for j, s in enumerate(sc.detach().cpu().flatten())]
    flat.sort()  # ascending score; ties by unit set, then unit index (deterministic)
    left = [u.count for u in units]
    removed_units: list[set[int]] = [set() for _ in units]
    removed = 0
    for _, i, j in flat:
        if left[i] == 1:
            continue  # would empty the layer
        p = units[i].params[j]
        if removed + p > target:
            if removed + p - target < target - removed:  # overshooting lands closer
                removed_units[i].add(j)
                left[i] -= 1
                removed += p
            break
        removed_units[i].add(j)
        left[i] -= 1
        removed += p
    plan = {u.path: [j for j in range(u.count) if j not in removed_units[i]] for i, u in enumerate(units)}
    return plan, removed


def random_scores(units: list[UnitSet], seed: int = 0) -> list[Tensor]:
    """Uniform random scores: the chance baseline a learned mask has to beat."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(u.count, generator=g) for u in units]
