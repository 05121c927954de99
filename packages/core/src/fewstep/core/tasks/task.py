"""``Task``: one modality's experiment setting, so any distillation objective runs on it unchanged.

A task holds what a cross-modality experiment needs and nothing about the method: its data splits,
its teacher, the shape and conditioning of a sample, how to sample a model with a given rule, and
``evaluate(samples) -> {name: Metric}`` with every figure's 95% interval. Modality packages subclass
it and register instances under the ``fewstep.tasks`` entry-point group (``registry.py``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..intervals import Metric

SPLITS = ("train", "eval")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Rule:
    """How to sample a model: ``solver="auto"`` is the model's own rule (a student's), else a core
    solver; ``num_steps=None`` is the model's own step count (or the solver default)."""

    solver: str = "auto"
    num_steps: int | None = None

    def __post_init__(self):
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps}: sampling needs at least 1 step")

    def describe(self) -> str:
        steps = "default steps" if self.num_steps is None else f"{self.num_steps} step{'s' * (self.num_steps != 1)}"
        return f"{'own rule' if self.solver == 'auto' else self.solver}, {steps}"


@dataclass(frozen=True)
class Budget:
    """A task's default distillation training settings (the method's knobs live on its Objective)."""

    iterations: int = 600
    batch_size: int = 64
    lr: float = 5e-5
    ema_decay: float = 0.999
    warmup_iterations: int = 50

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"iterations={self.iterations} and batch_size={self.batch_size} must be >= 1")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1 or self.warmup_iterations < 0:
            raise ValueError("lr must be > 0, ema_decay in [0, 1) and warmup_iterations >= 0")


@dataclass(frozen=True)
class Samples:
    """What ``Task.generate`` drew: the modality's payload plus what it cost.

    ``data`` is the task's own (images: (x, labels); series: forecasts with their truth); only the
    task that made it reads it. ``nfe`` is network evaluations per sample; ``rule`` says how.
    """

    data: Any
    n: int
    nfe: float
    seconds_per_sample: float
    rule: str


class Task(ABC):
    """One experiment setting. Subclasses set the attributes below in ``__init__`` and implement
    ``teacher``, ``data``, ``generate``, ``evaluate`` and ``picture``.

    Attributes: ``name`` (the registry key, e.g. "digits"), ``modality`` ("image", "timeseries"),
    ``description`` (one line), ``sample_shape``, ``conditioning`` (words, e.g. "class label (10)"),
    ``primary`` (the headline metric, a key of ``evaluate``'s result), ``default_n`` and ``min_n``
    (evaluation samples), ``budget`` (default distillation settings).
    """

    name: str
    modality: str
    description: str
    sample_shape: tuple[int, ...]
    conditioning: str
    primary: str
    default_n: int = 500
    min_n: int = 2
    budget: Budget = Budget()

    def check(self) -> Task:
        """Raises a ValueError naming what is missing or wrong; the registry calls it on every task."""
        for attr in ("name", "modality", "description", "sample_shape", "conditioning", "primary"):
            if not getattr(self, attr, None):
                raise ValueError(f"task {type(self).__name__} sets no {attr!r}")
        if not _NAME.match(self.name):
            raise ValueError(f"task name {self.name!r}: use lower-case letters, digits, '-' and '_'")
        if not 2 <= self.min_n <= self.default_n:
            raise ValueError(f"task {self.name}: need 2 <= min_n ({self.min_n}) <= default_n ({self.default_n})")
        return self

    # -- what the task is -----------------------------------------------------------------------
    @abstractmethod
    def teacher(self) -> Any:
        """The teacher Denoiser (loaded from shipped weights, or trained tiny on the fly), eval mode."""

    @abstractmethod
    def data(self, split: str) -> Any:
        """A split of ``SPLITS``: "train" is what students learn from, "eval" what samples are scored against."""

    def distill_data(self, data_kind: str, seed: int = 0) -> tuple[Tensor, Tensor | None] | None:
        """(x0, cond) for an objective that trains on ``data_kind`` ("real" | "trajectory" | "none");
        None when it needs no data. Raise a ValueError for kinds the task cannot serve."""
        if data_kind == "real":
            return self.data("train")
        return None

    def trajectories(self) -> Any:
        """The ``TrajectoryConfig`` for trajectory objectives; None takes the core default."""
        return None

    # -- sampling rules -------------------------------------------------------------------------
    def student_rule(self, steps: int) -> Rule:
        """How a distilled ``steps``-step student samples: its own rule."""
        return Rule("auto", steps)

    def default_rule(self) -> Rule:
        """The teacher's default sampler (what it is used with when cost does not matter)."""
        return Rule("auto")

    def rule_at(self, nfe: int) -> Rule:
        """A training-free sampler for the teacher that spends ``nfe`` evaluations per sample."""
        return Rule("dpmpp_2m", nfe)

    def best_rule(self) -> Rule:
        """The teacher at its best, cost aside (the "teacher at its best sampler" reference row)."""
        return self.default_rule()

    def reference_rule(self) -> Rule | None:
        """A deterministic many-step ODE solution from the same noise, the target of a trajectory
        student's paired error (None: the task has no paired error)."""
        return None

    # -- measuring ------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, model: Any, rule: Rule, n: int, seed: int = 0, progress: bool = False) -> Samples:
        """``n`` samples of ``model`` (a Denoiser) with ``rule``, deterministic in ``seed``."""

    @abstractmethod
    def evaluate(self, samples: Samples, seed: int = 0) -> dict[str, Metric]:
        """{metric: Metric with its 95% interval, bootstrapped over the samples}. The evaluation
        network (a classifier, an evaluator) must never be one that a method trains against."""

    def reference(self, n: int, seed: int = 0) -> Samples | None:
        """Real data drawn like samples (the real-vs-real floor row), or None when there is none."""
        return None

    def collapse(self, n: int, seed: int = 0) -> Samples | None:
        """A collapsed "model": one real sample per condition, repeated (the collapse reference
        row, so a reader sees what recall near 0 looks like), or None when the task has none."""
        return None

    def distance(self, samples: Samples, to: Samples, seed: int = 0) -> Metric | None:
        """The task's set distance between two sample sets (images: FD to the teacher's best
        samples), with its interval; None when the task has none."""
        return None

    def paired(self, samples: Samples, to: Samples, seed: int = 0) -> Metric | None:
        """Mean squared error between paired samples drawn from the same noise (a trajectory
        student vs ``reference_rule``'s solution); None when the task has none."""
        return None

    @abstractmethod
    def picture(self, rows: Mapping[str, Samples], path: Path) -> Path:
        """Write one picture of ``rows`` ({row label: samples}) to ``path`` (PNG); return it."""

    def describe(self) -> str:
        """One line: name first, then modality, sample shape, conditioning, description."""
        shape = "x".join(map(str, self.sample_shape))
        return f"{self.name}  [{self.modality}] {shape}, {self.conditioning}: {self.description}"
