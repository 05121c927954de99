"""Structural pruning of diffusion nets, after EcoDiff (Zhang et al. 2024, "Effortless Efficiency:
Low-Cost Pruning of Diffusion Models").

One verb, ``prune(denoiser, PruneConfig(ratio=0.2))``: learn a differentiable mask over the
structural units of a fewstep UNet or DiT (ResBlock inner channel groups, attention heads, DiT MLP
channel groups) on the error of the *final* sample of the whole sampling trajectory, with time-step
gradient checkpointing; threshold the masks to remove ``ratio`` of the prunable parameters; then
physically remove those units (smaller tensors, fewer FLOPs). No weight is retrained.

    pruned = prune(den, PruneConfig(ratio=0.2, iters=60))
    save_denoiser(pruned, "pruned")        # the plan is recorded; load_denoiser rebuilds the shapes
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..denoiser import Denoiser
from ..transforms import record
from .cost import SavedTensorBytes, flops, param_count
from .masks import UnitMasks, attach_masks, plan_gates, remove_masks
from .physical import Plan, prune_units
from .search import MaskSearch, PruneConfig, search_masks, trajectory
from .threshold import plan_from_scores, random_scores
from .units import KINDS, UnitSet, check_net, discover_units, prunable_params

__all__ = [
    "KINDS",
    "MaskSearch",
    "Plan",
    "PruneConfig",
    "SavedTensorBytes",
    "UnitMasks",
    "UnitSet",
    "apply_plan",
    "attach_masks",
    "discover_units",
    "flops",
    "param_count",
    "plan_from_scores",
    "plan_gates",
    "prunable_params",
    "prune",
    "prune_units",
    "random_scores",
    "remove_masks",
    "restore_structure",
    "search_masks",
    "trajectory",
]


def apply_plan(denoiser: Denoiser, plan: Plan, *, ratio: float | None = None, mlp_group: int = 8,
               info: dict[str, Any] | None = None) -> Denoiser:
    """A new Denoiser whose net has the units outside ``plan`` physically removed (input untouched).

    The plan is recorded on the net (``fewstep.core.transforms``) so a saved checkpoint reloads.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"expected a fewstep Denoiser, got {type(denoiser).__name__}; wrap the net in Denoiser(...)")
    check_net(denoiser.net)
    net = copy.deepcopy(denoiser.net)
    remove_masks(net)
    units = discover_units(net, KINDS, mlp_group)
    changed = {u.path: sorted(int(i) for i in plan[u.path]) for u in units
               if u.path in plan and len(set(plan[u.path])) < u.count}
    prune_units(net, changed, mlp_group)
    record(net, {"kind": "prune", "plan": changed, "ratio": ratio, "mlp_group": mlp_group})
    return Denoiser(
        net,
        denoiser.schedule,
        denoiser.prediction,
        sample_shape=denoiser.sample_shape,
        num_classes=denoiser.num_classes,
        guidance=denoiser.guidance,
        clip_x0=denoiser.clip_x0,
        boundary=denoiser.boundary,
        card=denoiser.card.with_provenance(**(info or {})),
    ).train(denoiser.training)


def prune(denoiser: Denoiser, config: PruneConfig) -> Denoiser:
    """EcoDiff (Zhang et al. 2024): learn unit masks on the final sample, threshold, remove. Input untouched."""
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}; e.g. PruneConfig(ratio=0.2)")
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"expected a fewstep Denoiser, got {type(denoiser).__name__}; wrap the net in Denoiser(...)")
    check_net(denoiser.net)
    work = copy.deepcopy(denoiser)  # the search toggles eval mode and grad flags; keep the input pristine
    found = search_masks(work, config)
    plan, removed = plan_from_scores(found.units, found.logits, config.ratio)
    prunable = prunable_params(found.units)
    before, flops_before = param_count(denoiser.net), flops(work)
    summary = {
        "method": "ecodiff",
        "ratio": config.ratio,
        "config": config.to_dict(),
        "trajectory_steps": found.steps,
        "prunable_params": prunable,
        "removed_params": removed,
        "params_before": before,
        "units_kept": {u.path: [len(plan[u.path]), u.count] for u in found.units},
        "final_rec": found.history[-1]["rec"] if found.history else None,
        "search_seconds": round(found.seconds, 3),
    }
    out = apply_plan(denoiser, plan, ratio=config.ratio, mlp_group=config.mlp_group)
    summary["params_after"] = param_count(out.net)
    summary["gflops_before"] = flops_before / 1e9
    summary["gflops_after"] = flops(out) / 1e9
    out.card = out.card.with_provenance(prune=summary)
    return out


def restore_structure(net: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Re-apply a recorded pruning spec to a fresh net of the original config (weights load after)."""
    if spec.get("kind") != "prune" or not isinstance(spec.get("plan"), dict):
        raise ValueError(f"not a pruning spec (need kind='prune' and a 'plan' dict): {sorted(spec)}")
    return prune_units(net, spec["plan"], int(spec.get("mlp_group", 8)))
