"""The one list of distillation objectives: ``OBJECTIVES[name]`` is the Objective class itself.

Built from the classes (each carries its ``name``), so CLIs, docs, the experiment runner and the
objective contract test read one typed mapping; adding a method is writing its class and listing
it here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from .arcflow import ArcFlow
from .base import Objective
from .boot import BOOT
from .consistency import SCott, SLAM, ConsistencyDistillation, HyperSD, MultistepConsistency
from .continuous import RCM, SCM, TBCM
from .decoupled import DecoupledDMD, FlashDMD
from .disback import DisBack
from .dmd import DMD, DMD2
from .mmd import MMDDDM
from .multi_student import MSD
from .progressive import GuidedProgressiveDistillation, ProgressiveDistillation
from .reflow import Reflow, SlimFlow
from .score_implicit import SIM, VSD, UniInstruct
from .tdm import TDM

TRAJECTORY: tuple[type[Objective], ...] = (
    ProgressiveDistillation,
    GuidedProgressiveDistillation,
    ConsistencyDistillation,
    MultistepConsistency,
    HyperSD,
    SCott,
    SLAM,
    SCM,
    RCM,
    TBCM,
    BOOT,
    Reflow,
    SlimFlow,
    ArcFlow,
)
DISTRIBUTION: tuple[type[Objective], ...] = (
    DMD,
    DMD2,
    VSD,
    SIM,
    UniInstruct,
    DecoupledDMD,
    FlashDMD,
    DisBack,
    TDM,
    MMDDDM,
    MSD,  # one student per call; distill_multi_student trains K and the router
)


def _by_name(classes: tuple[type[Objective], ...]) -> Mapping[str, type[Objective]]:
    table: dict[str, type[Objective]] = {}
    for cls in classes:
        if cls.name in table:
            raise RuntimeError(f"two objectives are named {cls.name!r}: {table[cls.name].__name__} and {cls.__name__}")
        table[cls.name] = cls
    return MappingProxyType(table)


OBJECTIVES: Mapping[str, type[Objective]] = _by_name(TRAJECTORY + DISTRIBUTION)


def methods() -> list[str]:
    return sorted(OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown distillation method {name!r}; known: {', '.join(methods())}")
    return OBJECTIVES[name]


def objective_from_description(description: Mapping) -> Objective:
    """The objective an ``Objective.describe()`` dict (read back from JSON) describes: its
    ``method`` and every field, with JSON lists turned back into the tuples the fields hold.
    Fields outside equality (``compare=False``: callables such as MMD-DDM's feature map, which a
    card records by name only) are left at their defaults."""
    d = dict(description)
    if "method" not in d:
        raise ValueError(f"an objective description names its 'method'; got keys {sorted(d)}")
    cls = objective_class(d.pop("method"))
    defaults = cls()
    skip = {f.name for f in dataclasses.fields(cls) if not f.compare} if dataclasses.is_dataclass(cls) else set()
    values = {
        k: tuple(v) if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple) else v
        for k, v in d.items()
        if k not in skip
    }
    return make_objective(cls.name, **values)


def make_objective(name: str, **overrides) -> Objective:
    """The objective ``name`` with its paper defaults, fields overridden by ``overrides``."""
    cls = objective_class(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"{name}: unknown options {sorted(unknown)}; it takes {sorted(fields)}")
    return cls(**overrides)
