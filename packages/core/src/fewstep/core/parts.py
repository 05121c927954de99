"""Trainable parts of a model: one AdamW, one gradient clip and one update rate each.

A distillation objective trains more than its student: a fake-score critic, a discriminator, a
weighting net. It names them as :class:`Part` s, and the train loop builds one optimiser per part,
clips each part's gradient norm on its own (a critic's large gradient never shrinks the student's
update), and steps each part on its own schedule. The two time-scale update rule (TTUR; Heusel et
al. 2017, Sec. 2) is a part's ``lr_scale``; DMD2's update ratio (Yin et al. 2024b, Sec. 4.2: the
fake score takes five updates per generator update) is a part's ``updates_per_student_update``.
Plain training (a teacher) has one implicit part: the whole module (:data:`WHOLE`).

Update schedule. With ratios r_p (1 for the student and every part that moves with it) and
R = lcm(r_p), part p steps on the iterations i with i % (R / r_p) == 0: the student every R-th
iteration from iteration 0, a critic with r = 5 on every one (R = 5). The rule reads the iteration
index only, so a resumed run keeps its rhythm and an objective asks "does the student update at
this iteration?" for free (:func:`updates_now`), and skips the generator's term when it does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

WHOLE = ""  # the part that is the whole module (plain training's single implicit part)
STUDENT = "student"  # the reference part of distillation: other parts' update ratios count against it


@dataclass(frozen=True)
class Part:
    """A trainable submodule and its optimiser settings; None fields take the TrainConfig's."""

    name: str  # submodule path in the trained module ("student", "critic", "disc"); WHOLE = everything
    lr_scale: float = 1.0  # multiple of TrainConfig.lr (TTUR: a critic at 2x the student's rate)
    betas: tuple[float, float] | None = None  # AdamW (beta1, beta2)
    weight_decay: float | None = None  # AdamW decoupled weight decay
    grad_clip: float | None = None  # max gradient norm over this part's parameters; 0 = no clipping
    updates_per_student_update: int = 1  # this part's optimiser steps per student step (DMD2: 5)

    def __post_init__(self):
        if not isinstance(self.name, str) or (
            self.name and not all(s.isidentifier() or s.isdigit() for s in self.name.split("."))
        ):
            raise ValueError(
                f"Part name {self.name!r}: a submodule path like 'critic' or 'path.0' ('' = the whole module)"
            )
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ValueError(f"Part {self.name!r}: lr_scale={self.lr_scale} must be finite and > 0")
        if self.betas is not None:
            b = tuple(float(v) for v in self.betas)
            if len(b) != 2 or not all(0.0 <= v < 1.0 for v in b):
                raise ValueError(f"Part {self.name!r}: betas={self.betas} must be two numbers in [0, 1)")
            object.__setattr__(self, "betas", b)  # JSON cards give lists back
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"Part {self.name!r}: weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"Part {self.name!r}: grad_clip={self.grad_clip} must be >= 0 (0 = no clipping)")
        r = self.updates_per_student_update
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"Part {self.name!r}: updates_per_student_update={r!r} must be an int >= 1")
        if self.name in (STUDENT, WHOLE) and r != 1:
            raise ValueError(
                f"Part {self.name or 'WHOLE'!r} is the unit other update ratios count in: its ratio must be 1"
            )


def check_parts(parts: Sequence[Part]) -> tuple[Part, ...]:
    """The parts as a tuple, with unique names, and WHOLE only alone."""
    parts = tuple(parts)
    if not parts or not all(isinstance(p, Part) for p in parts):
        raise TypeError(f"parts must be a non-empty sequence of Part, got {parts!r}")
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"part names repeat: {names}")
    if WHOLE in names and len(names) > 1:
        raise ValueError(f"the whole-module part ('') cannot sit beside named parts: {names}")
    return parts


def update_period(parts: Sequence[Part], part: Part) -> int:
    """Iterations between two optimiser steps of ``part``: R / r with R = lcm of all ratios."""
    cycle = math.lcm(*(p.updates_per_student_update for p in parts))
    return cycle // part.updates_per_student_update


def updates_now(parts: Sequence[Part], name: str, iteration: int) -> bool:
    """Whether part ``name`` takes an optimiser step at training iteration ``iteration`` (0-based)."""
    for p in parts:
        if p.name == name:
            return int(iteration) % update_period(parts, p) == 0
    raise KeyError(f"no part named {name!r}; the parts are {[p.name for p in parts]}")


def module_parts(module: nn.Module) -> tuple[Part, ...]:
    """``module.parts()`` when the module declares parts (a DistillModule), else the whole module."""
    declared = getattr(module, "parts", None)
    return check_parts(declared() if callable(declared) else (Part(WHOLE),))


def part_parameters(
    module: nn.Module, parts: Sequence[Part], allow_empty: bool = False
) -> list[list[tuple[str, nn.Parameter]]]:
    """(name, parameter) pairs of each part's trainable parameters, in ``named_parameters`` order.

    Every trainable parameter belongs to exactly one part: a part that names no submodule, parts
    that overlap, and a trainable parameter under no part are errors (each would train the wrong
    thing silently). Frozen parameters (requires_grad False) are left out. A part without
    trainable parameters is an error for training, allowed with ``allow_empty`` (a module built to
    evaluate a loss, e.g. around an analytic student).
    """
    parts = check_parts(parts)
    for p in parts:
        if p.name:
            try:
                module.get_submodule(p.name)
            except AttributeError:
                raise ValueError(f"part {p.name!r} names no submodule of {type(module).__name__}") from None
    out: list[list[tuple[str, nn.Parameter]]] = [[] for _ in parts]
    stray: list[str] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        owners = [i for i, p in enumerate(parts) if p.name == WHOLE or name == p.name or name.startswith(p.name + ".")]
        if len(owners) > 1:
            raise ValueError(f"parameter {name!r} lies in several parts: {[parts[i].name for i in owners]}")
        if owners:
            out[owners[0]].append((name, param))
        else:
            stray.append(name)
    if stray:
        raise ValueError(
            f"trainable parameters under no part: {stray[:5]}{' ...' if len(stray) > 5 else ''}; "
            f"declare their submodule in the objective's parts() (parts now: {[p.name for p in parts]})"
        )
    empty = [p.name for p, ps in zip(parts, out) if not ps]
    if empty and not allow_empty:
        raise ValueError(f"parts without trainable parameters: {empty}")
    return out


__all__ = ["STUDENT", "WHOLE", "Part", "check_parts", "module_parts", "part_parameters", "update_period", "updates_now"]
