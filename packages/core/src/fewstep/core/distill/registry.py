"""Method name -> objective class, imported lazily so one broken method never hides the others."""

from __future__ import annotations

import dataclasses
from importlib import import_module

from .base import Objective

# name: (module under fewstep.core.distill, class). Trajectory family (issue "trajectory distillation").
METHODS: dict[str, tuple[str, str]] = {
    "pd": ("progressive", "ProgressiveDistillation"),
    "guided-pd": ("progressive", "GuidedProgressiveDistillation"),
    "cd": ("consistency", "ConsistencyDistillation"),
    "mlcm": ("consistency", "MultistepConsistency"),
    "hyper-sd": ("consistency", "HyperSD"),
    "scott": ("consistency", "SCott"),
    "slam": ("consistency", "SLAM"),
    "scm": ("continuous", "SCM"),
    "rcm": ("continuous", "RCM"),
    "tbcm": ("continuous", "TBCM"),
    "boot": ("boot", "BOOT"),
    "reflow": ("reflow", "Reflow"),
    "slimflow": ("reflow", "SlimFlow"),
    "arcflow": ("arcflow", "ArcFlow"),
    # Distribution family (issue "distribution-matching distillation").
    "dmd": ("dmd", "DMD"),
    "dmd2": ("dmd", "DMD2"),
    "vsd": ("score_implicit", "VSD"),
    "sim": ("score_implicit", "SIM"),
    "uni-instruct": ("score_implicit", "UniInstruct"),
    "decoupled-dmd": ("decoupled", "DecoupledDMD"),
    "flash-dmd": ("decoupled", "FlashDMD"),
    "disback": ("disback", "DisBack"),
    "tdm": ("tdm", "TDM"),
    "mmd-ddm": ("mmd", "MMDDDM"),
    "msd": ("multi_student", "MSD"),  # one student per call; distill_multi_student trains K and the router
}


def methods() -> list[str]:
    return sorted(METHODS)


def objective_class(name: str) -> type[Objective]:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {', '.join(methods())}")
    module, cls = METHODS[name]
    return getattr(import_module(f"{__package__}.{module}"), cls)


def make_objective(name: str, **overrides) -> Objective:
    """The objective ``name`` with its paper defaults, fields overridden by ``overrides``."""
    cls = objective_class(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"{name}: unknown options {sorted(unknown)}; it takes {sorted(fields)}")
    return cls(**overrides)
