"""What a checkpoint says about how to use its model: the typed :class:`ModelCard`.

The Denoiser is the model contract (net, schedule, parametrisation, conditioning, guidance). The
card is the advice that travels with the weights: a distilled student's step count and its own
sampling rule (solver, trained grid, options), and provenance (what it was made from, by which
method, with which settings). Frozen dataclasses with a JSON round trip, validated when built, so
a card edited by hand fails on load with a message that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

Scalar = bool | int | float | str


class CardError(ValueError):
    """A model card field is missing, malformed or inconsistent."""


class FrozenDict(dict):
    """A read-only dict: cards are values, so their mappings cannot change under a holder's feet.
    Unlike a mappingproxy it deep-copies and pickles (Denoisers are deep-copied by students and
    quantizers)."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("card mappings are read-only: build a new card (ModelCard.with_provenance, dataclasses.replace)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __hash__(self):  # frozen dataclasses holding it stay hashable
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))


def _frozen(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return FrozenDict(d or {})


@dataclass(frozen=True)
class Boundary:
    """Consistency-model parametrisation (Song et al. 2023, Eq. 5, with LCM's timestep scaling k):
    x0 = c_skip(t) x + c_out(t) x0_net, c_skip = s^2 / ((k n)^2 + s^2), c_out = k n / sqrt((k n)^2 + s^2),
    n the net time and s = ``sigma_data``; f(x, t_min) = x exactly since c_skip(0) = 1."""

    sigma_data: float
    timestep_scaling: float

    def __post_init__(self):
        for name in ("sigma_data", "timestep_scaling"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise CardError(f"boundary.{name}={v!r} must be a positive finite number")

    def to_dict(self) -> dict[str, float]:
        return {"sigma_data": float(self.sigma_data), "timestep_scaling": float(self.timestep_scaling)}

    @classmethod
    def from_dict(cls, d: Any) -> Boundary:
        if not isinstance(d, Mapping) or set(d) != {"sigma_data", "timestep_scaling"}:
            raise CardError(f"boundary={d!r} needs exactly the keys 'sigma_data' and 'timestep_scaling'")
        return cls(d["sigma_data"], d["timestep_scaling"])


@dataclass(frozen=True)
class Reparam:
    """The net predicts ``net_prediction``; the Denoiser converts its output to its own
    parametrisation at every call. A student initialised from a teacher of another parametrisation
    keeps the teacher's function this way instead of re-reading its weights as the new output.

    The conversion goes through (x0, eps) = to_x0_eps(out) with the coefficient it divides by
    floored: alpha by ``alpha_floor`` (eps -> x0 = (x - sigma eps) / alpha) and sigma likewise (x0
    -> eps). It is exact wherever alpha, sigma >= alpha_floor (``alpha_floor`` = 0: exact
    everywhere). Near t_max of a VP schedule alpha ~ 0.006, and the exact eps -> x0 map multiplies
    every error in eps by 1/alpha ~ 160 (the reason one-step students use v; Salimans & Ho 2022,
    Sec. 4): floored, the gain is at most 1/alpha_floor and x0 starts as (alpha / alpha_floor) times
    the teacher's x0 there, a faint copy instead of noise."""

    net_prediction: str
    alpha_floor: float = 0.0

    def __post_init__(self):
        if self.net_prediction not in ("eps", "x0", "v", "flow"):
            raise CardError(f"reparam.net_prediction={self.net_prediction!r}: use eps, x0, v or flow")
        f = self.alpha_floor
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 0 <= f < 1:
            raise CardError(f"reparam.alpha_floor={f!r} must be a number in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return {"net_prediction": self.net_prediction, "alpha_floor": float(self.alpha_floor)}

    @classmethod
    def from_dict(cls, d: Any) -> Reparam:
        if not isinstance(d, Mapping) or set(d) != {"net_prediction", "alpha_floor"}:
            raise CardError(f"reparam={d!r} needs exactly the keys 'net_prediction' and 'alpha_floor'")
        return cls(d["net_prediction"], d["alpha_floor"])


@dataclass(frozen=True)
class SamplerRule:
    """A distilled student's own sampling rule: ``solver`` on its trained ``grid`` (explicit
    descending times, which may end with 0, or a grid name) with fixed solver ``options``."""

    solver: str
    grid: tuple[float, ...] | str | None = None
    options: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self):
        from .solvers.specs import SOLVERS  # late: solvers import the Denoiser, which holds a card

        if self.solver not in SOLVERS:
            raise CardError(f"sampler.solver={self.solver!r} is not a fewstep solver; available: {', '.join(sorted(SOLVERS))}")
        grid = self.grid
        if isinstance(grid, list | tuple):
            times = tuple(float(t) for t in grid)
            if len(times) < 2 or not all(math.isfinite(t) for t in times) or any(b >= a for a, b in zip(times, times[1:])):
                raise CardError(f"sampler.grid must hold at least 2 finite, strictly descending times, got {list(grid)}")
            object.__setattr__(self, "grid", times)
        elif grid is not None and not isinstance(grid, str):
            raise CardError(f"sampler.grid must be a list of times or a grid name, got {type(grid).__name__}")
        bad = {k: v for k, v in dict(self.options).items() if not isinstance(v, Scalar)}
        if bad:
            raise CardError(f"sampler.options must be numbers, strings or booleans, got {bad}")
        object.__setattr__(self, "options", _frozen(self.options))

    @property
    def num_steps(self) -> int | None:
        """Grid intervals of an explicit grid (a final 0 counts as an interval), else None."""
        return len(self.grid) - 1 if isinstance(self.grid, tuple) else None

    def to_dict(self) -> dict[str, Any]:
        grid = list(self.grid) if isinstance(self.grid, tuple) else self.grid
        return {"solver": self.solver, "grid": grid, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Any) -> SamplerRule:
        if not isinstance(d, Mapping) or "solver" not in d:
            raise CardError(f"sampler={d!r} must name a 'solver' (and usually a 'grid')")
        known = {"solver", "grid", "options"}
        # Cards written before the typed card kept solver options at the top level.
        options = {**{k: v for k, v in d.items() if k not in known}, **dict(d.get("options") or {})}
        return cls(d["solver"], d.get("grid"), options)


@dataclass(frozen=True)
class ModelCard:
    """How to use a checkpoint. ``student_steps``: the steps a distilled student was trained for
    (None: any, as for a teacher); ``sampler``: its own rule, which ``sample(solver="auto")``
    takes; ``provenance``: JSON-serialisable facts about how it was made (dataset, teacher,
    method and its settings, training cost), descriptive only: no code path reads options from it
    except the dataset a model belongs to."""

    student_steps: int | None = None
    sampler: SamplerRule | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        s = self.student_steps
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise CardError(f"student_steps={s!r} must be a whole number >= 1 (or None)")
        if self.sampler is not None and not isinstance(self.sampler, SamplerRule):
            raise CardError(f"sampler must be a SamplerRule, got {type(self.sampler).__name__}")
        if not isinstance(self.provenance, Mapping):
            raise CardError(f"provenance must be a mapping, got {type(self.provenance).__name__}")
        object.__setattr__(self, "provenance", _frozen(self.provenance))

    def with_provenance(self, **facts: Any) -> ModelCard:
        """A copy with ``facts`` added to (or replacing keys of) the provenance."""
        return replace(self, provenance={**self.provenance, **facts})

    def without_provenance(self, *keys: str) -> ModelCard:
        return replace(self, provenance={k: v for k, v in self.provenance.items() if k not in keys})

    def to_dict(self) -> dict[str, Any]:
        return {
            "student_steps": self.student_steps,
            "sampler": self.sampler.to_dict() if self.sampler else None,
            "provenance": _plain(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Any) -> ModelCard:
        if not isinstance(d, Mapping):
            raise CardError(f"a model card must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"student_steps", "sampler", "provenance"}
        if unknown:
            raise CardError(f"model card has unknown fields {sorted(unknown)}")
        sampler = d.get("sampler")
        return cls(d.get("student_steps"), SamplerRule.from_dict(sampler) if sampler is not None else None, d.get("provenance") or {})


def _plain(v: Any) -> Any:
    """Mapping proxies and tuples back to JSON-ready dicts and lists."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


__all__ = ["Boundary", "CardError", "ModelCard", "SamplerRule"]
