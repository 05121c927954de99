"""The contract every distillation objective follows, and the module the one train loop trains.

An :class:`Objective` is a frozen dataclass of hyperparameters with three jobs:

- ``student_spec(teacher)``: what the student is (a copy of the teacher's net, or a smaller one;
  its schedule, parametrisation, consistency boundary, and guidance input);
- ``setup(module)``: extra trainable or frozen parts (an EMA target, a fake-score critic, a GAN
  head), attached to the :class:`DistillModule` so they are checkpointed and resumed with it;
- ``parts(module)``: which submodules train, each with its optimiser settings and update ratio
  (``fewstep.core.parts.Part``: TTUR learning rates, per-part clipping, DMD2's 5:1 rule);
- ``loss(module, batch, generator)``: the per-sample loss (B,) for one batch.

``sampler(teacher, student_steps)`` says how the trained student samples (stored in its card), so
``fewstep.core.solvers.sample`` and every metric take the student as they take the teacher.

The teacher is frozen and not a submodule (not in checkpoints, not in DDP's parameter list).
``DistillModule.forward`` runs the objective, so under torchrun the DDP wrapper's forward is the
objective and gradients are synchronised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..card import Boundary, ModelCard, Reparam, SamplerRule
from ..denoiser import Denoiser
from ..parts import STUDENT, Part, check_parts, part_parameters, updates_now
from ..schedules import Schedule

DATA_KINDS = ("real", "trajectory", "none")


@dataclass
class Batch:
    """One training batch as objectives see it (each field (B, ...) or None).

    ``x0``: real data (data="real"), or the teacher's final sample (data="trajectory").
    ``traj``: (B, K+1, ...) states of the teacher's sampling trajectory at ``traj_t`` (K+1,)
    descending times ending at 0 (``traj[:, 0]`` is the scaled noise, ``traj[:, -1]`` the sample).
    """

    x0: Tensor | None
    cond: Tensor | None
    traj: Tensor | None = None
    traj_t: Tensor | None = None
    n: int | None = None  # batch size when no tensor carries it (data-free, unconditional)

    @property
    def size(self) -> int:
        for v in (self.x0, self.traj, self.cond):
            if v is not None:
                return v.shape[0]
        if self.n is not None:
            return self.n
        raise ValueError("empty batch")


@dataclass(frozen=True)
class StudentSpec:
    """How to build the student from the teacher; None fields copy the teacher's."""

    net: nn.Module | None = None  # None: a copy of the teacher's net, initialised from its weights
    schedule: Schedule | None = None
    prediction: str | None = None
    boundary: Boundary | None = None  # consistency skip/out parametrisation (card.Boundary)
    guidance_embed: bool = False  # the student takes the CFG scale as an input (guided distillation)
    # A student of another parametrisation than the teacher's, on the teacher's schedule, converts
    # its net's output (card.Reparam) so the copied weights keep the teacher's function. False for
    # nets whose output is not a parametrisation of the teacher's prediction (BOOT's signal).
    keep_function: bool = True


class Objective:
    """Base class; subclasses are frozen dataclasses with a ``name`` and a ``data`` kind."""

    name: ClassVar[str] = "objective"
    data: ClassVar[str] = "real"  # "real" dataset images, "trajectory" teacher trajectories, "none" labels only
    paper: ClassVar[str] = ""
    skips_parameters: ClassVar[bool] = False  # some steps leave parameters without gradients (DDP must know)
    # FSDP2 gathers a net's shards at each of its forwards, a collective: it needs every rank to call
    # every net the same number of times per iteration, through its forward, with its own
    # parameters. Rollouts of a per-rank random length (backward simulation), ``gan.frozen_call``
    # (parameters swapped by functional_call) and early exits by exception break that; an objective
    # that does none of them, checked at world size 2 (tests), says so here.
    fsdp_ready: ClassVar[bool] = False
    # The student's output parametrisation when the teacher predicts eps (None: the teacher's).
    # Every student starts at t_max, where the eps form's x0 = (x - sigma eps) / alpha divides by
    # alpha(t_max) ~ 0.006 (VP) and amplifies every error in eps (Salimans & Ho 2022, Sec. 4;
    # docs/benchmarks/distill_distribution_probes.md): students are v, converted from the
    # teacher's eps net with the floor DistillConfig.alpha_floor (card.Reparam).
    student_prediction: ClassVar[str | None] = "v"

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec()

    def setup(self, module: DistillModule) -> None:
        """Attach extra parts (``module.add_target()``, ``module.critic = ...``)."""

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        """The trainable submodules and their optimiser settings: the student alone by default.
        Called once, after :meth:`setup`, so it can name what setup attached; e.g. DMD2's
        ``(Part("student"), Part("critic", updates_per_student_update=5))``."""
        return (Part(STUDENT),)

    def trained_guidance(self) -> tuple[float, float, float] | None:
        """(w_min, w_max, default w) for a student that takes the CFG scale as an input (guided
        distillation): the card records the range and the student samples at the default unless
        told otherwise. None for students without a guidance input."""
        return None

    def sampler(self, teacher: Denoiser, student_steps: int) -> SamplerRule:
        """The student's sampling rule: consistency sampling on a uniform grid by default."""
        return SamplerRule("consistency", uniform_times(teacher.schedule, student_steps))

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict, is_dataclass

        return {"method": self.name, **(asdict(self) if is_dataclass(self) else {})}


def uniform_times(schedule: Schedule, steps: int) -> list[float]:
    """``steps`` evaluation times uniform in t from t_max, then 0: the grid a K-step student runs on."""
    ts = torch.linspace(schedule.t_max, schedule.t_min, steps + 1, dtype=torch.float64)[:-1]
    return [float(t) for t in ts] + [0.0]


def copy_net(teacher_net: nn.Module, guidance_embed: bool = False) -> nn.Module:
    """A trainable copy of a fewstep net with the teacher's weights; CFG label dropout off, and a
    (zero-initialised) guidance input when asked. Foreign nets are deep-copied as they are."""
    from ..nets import build_net, is_fewstep_net, net_spec

    if not is_fewstep_net(teacher_net):
        if guidance_embed:
            raise ValueError("guidance_embed needs a fewstep net (UNet); this teacher's net is foreign")
        return copy.deepcopy(teacher_net).requires_grad_(True)  # the teacher may already be frozen
    kind, cfg = net_spec(teacher_net)
    if guidance_embed and "guidance_embed" not in cfg:
        raise ValueError(f"guidance_embed needs a net with a guidance input (the UNet); this teacher's net is {kind!r}")
    # CFG label dropout off where the net has it (a time-series net has no labels: its config has no such key).
    cfg = {**cfg, **({"label_dropout": 0.0} if "label_dropout" in cfg else {}), **({"guidance_embed": True} if guidance_embed else {})}
    net = build_net(kind, cfg)
    missing, unexpected = net.load_state_dict(teacher_net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
        raise ValueError(f"student/teacher weights differ: missing {missing}, unexpected {unexpected}")
    return net


def student_reparam(teacher: Denoiser, spec: StudentSpec, alpha_floor: float = 0.0) -> Reparam | None:
    """How the student's net output becomes its prediction: the teacher's own conversion when the
    parametrisation stays, else a conversion from what the copied net predicts (card.Reparam)."""
    prediction = spec.prediction or teacher.prediction
    if not spec.keep_function or spec.schedule is not None:
        return None
    if prediction == teacher.prediction:
        return teacher.reparam
    source = teacher.reparam.net_prediction if teacher.reparam else teacher.prediction
    floor = max(alpha_floor, teacher.reparam.alpha_floor if teacher.reparam else 0.0)
    return None if source == prediction and floor == 0 else Reparam(source, floor)


def make_student(
    teacher: Denoiser, spec: StudentSpec, student_steps: int, sampler: SamplerRule, alpha_floor: float = 0.0
) -> Denoiser:
    """The untrained student: the spec's net (default a copy of the teacher's), its card saying
    how many steps it is trained for and how it samples. A student of another parametrisation
    converts the copied net's output (:func:`student_reparam`, floored at ``alpha_floor``)."""
    net = spec.net if spec.net is not None else copy_net(teacher.net, spec.guidance_embed)
    return Denoiser(
        net,
        spec.schedule or teacher.schedule,
        spec.prediction or teacher.prediction,
        reparam=student_reparam(teacher, spec, alpha_floor),
        sample_shape=teacher.sample_shape,
        num_classes=teacher.num_classes,
        guidance=1.0,
        clip_x0=teacher.clip_x0,
        boundary=spec.boundary,
        card=ModelCard(student_steps=student_steps, sampler=sampler),
    )


def student_for(
    teacher: Denoiser,
    objective: Objective,
    student_steps: int,
    *,
    prediction: str | None = None,
    alpha_floor: float = 0.05,
    net: nn.Module | None = None,
) -> Denoiser:
    """The untrained student an objective distils: its spec, with the parametrisation chosen as
    ``prediction`` (a caller's), else the spec's, else the objective's default for eps teachers
    (``Objective.student_prediction``: v); a caller's ``net`` is taken as it is (no conversion)."""
    from dataclasses import replace

    spec = objective.student_spec(teacher)
    if net is not None:
        spec = replace(spec, net=net, keep_function=False)  # a net of the caller's: its output is what it says
    chosen = prediction or spec.prediction or (objective.student_prediction if teacher.prediction == "eps" else None)
    if chosen is not None:
        spec = replace(spec, prediction=chosen)
    return make_student(teacher, spec, student_steps, objective.sampler(teacher, student_steps), alpha_floor)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off (EMA targets, round teachers)."""
    out = copy.deepcopy(module)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


class DistillModule(nn.Module):
    """What the train loop trains: the student plus the objective's extra parts.

    Submodules (checkpointed): ``student`` (a Denoiser), optional ``target`` (a frozen copy,
    updated by EMA with :meth:`update_target` or replaced by :meth:`refresh_target`), optional
    ``critic`` / ``disc`` (trainable). Which of them train, and with which optimiser settings, is
    the objective's :meth:`Objective.parts` (``fewstep.core.parts``). Buffer ``iteration`` counts
    training forwards (one per training iteration), so progressive schedules (step halving,
    segment schedules) and update ratios resume where they stopped. ``teacher`` and the
    :meth:`attach` ed callables are held outside the module tree.
    """

    def __init__(
        self, teacher: Denoiser, student: Denoiser, objective: Objective, total_iterations: int, teacher_guidance: float = 1.0
    ):
        super().__init__()
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self._attached: dict[str, Callable[..., Any]] = {}
        self.student = student
        self.objective = objective
        self.total_iterations = int(total_iterations)
        self.teacher_guidance = float(teacher_guidance)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.target: Denoiser | None = None
        objective.setup(self)
        self._parts = check_parts(objective.parts(self))
        # A part naming nothing, or a trainable parameter under no part, stops here (empty parts
        # are the train loop's to refuse: a module may be built only to evaluate a loss).
        part_parameters(self, self._parts, allow_empty=True)

    # -- parts ----------------------------------------------------------------------------------
    def parts(self) -> tuple[Part, ...]:
        """The trainable parts and their optimiser settings (the objective's), for the train loop."""
        return self._parts

    def updates(self, name: str) -> bool:
        """Whether part ``name`` takes an optimiser step at this iteration (``parts.updates_now``):
        an objective skips a term whose part is off its turn (DMD2's generator term on critic-only
        iterations), so no compute goes into a gradient the loop would drop."""
        return updates_now(self._parts, name, int(self.iteration))

    def add_target(self) -> Denoiser:
        """A frozen copy of the student (consistency EMA target, or a progressive round's teacher)."""
        self.target = frozen_copy(self.student)
        return self.target

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """theta^- <- decay theta^- + (1 - decay) theta (Song et al. 2023, Alg. 2)."""
        for pt, ps in zip(self.target.parameters(), self.student.parameters()):
            pt.lerp_(ps.detach(), 1.0 - decay)

    @torch.no_grad()
    def refresh_target(self) -> None:
        self.target.load_state_dict(self.student.state_dict())

    # -- attachments: fixed callables the objective uses, never trained ---------------------------
    def attach(self, name: str, fn: Callable[..., Any]) -> None:
        """Hold ``fn`` (a reward, a feature map) for the objective under ``name``.

        Outside the module tree: not a parameter, not in the state dict or checkpoints, not seen by
        DDP or FSDP, shared (not copied) by ``copy.deepcopy``. An ``nn.Module`` attachment follows
        :meth:`to`. Read it back with ``module.attachments[name]`` (or ``.get(name)``).
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"attachment name {name!r} must be an identifier")
        if not callable(fn):
            raise TypeError(f"attachment {name!r} must be callable, got {type(fn).__name__}")
        if name in self._modules or name in self._parameters or name in self._buffers:
            raise ValueError(f"{name!r} is already a submodule, parameter or buffer of the DistillModule")
        self._attached[name] = fn

    @property
    def attachments(self) -> Mapping[str, Callable[..., Any]]:
        """The :meth:`attach` ed callables by name (read-only)."""
        return MappingProxyType(self._attached)

    def to(self, *args, **kwargs):
        self.teacher.to(*args, **kwargs)
        for fn in self._attached.values():
            if isinstance(fn, nn.Module):
                fn.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> DistillModule:
        # The teacher and attachments are frozen and held outside the tree: a copy (the train
        # loop's FSDP copy) shares them rather than holding a second teacher.
        memo[id(self.teacher)] = self.teacher
        memo[id(self._attached)] = dict(self._attached)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return float(self.iteration) / max(1, self.total_iterations)

    # -- the training forward ---------------------------------------------------------------------
    def forward(
        self, x0: Tensor | None, cond: Tensor | None, traj: Tensor | None, traj_t: Tensor | None, generator: torch.Generator, n: int | None = None
    ) -> Tensor:
        batch = Batch(x0=x0, cond=cond, traj=traj, traj_t=traj_t, n=n)
        loss = self.objective.loss(self, batch, generator)
        if self.training:
            self.iteration += 1
        if loss.ndim != 1 or loss.shape[0] != batch.size:
            raise ValueError(f"{self.objective.name}: loss must be per-sample (B,), got {tuple(loss.shape)}")
        return loss

    @property
    def fsdp_ready(self) -> bool:
        """For the train loop: whether the objective may be sharded with FSDP2 (``Objective.fsdp_ready``)."""
        return bool(getattr(self.objective, "fsdp_ready", False))

    @property
    def find_unused_parameters(self) -> bool:
        """For DDP: True when some iterations leave parameters without gradients (the objective
        says so, or a part updates more often than the student)."""
        ratios = any(p.updates_per_student_update > 1 for p in self._parts)
        return bool(getattr(self.objective, "skips_parameters", False)) or ratios

    # -- helpers shared by objectives -------------------------------------------------------------
    @torch.no_grad()
    def teacher_x0(self, x: Tensor, t: Tensor, cond: Tensor | None, guidance: float | None = None) -> Tensor:
        w = self.teacher_guidance if guidance is None else guidance
        return self.teacher(x, t, cond, w)


# -- small shared maths ---------------------------------------------------------------------------
def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Gaussian noise from the loop's generator (CPU), moved to ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """Per-sample pseudo-Huber distance sqrt(||a-b||^2 + c^2) - c (Song & Dhariwal 2023, Sec. 3.3);
    c defaults to 0.00054 sqrt(d) as in the paper. Returns (B,)."""
    d = a[0].numel()
    c = 0.00054 * d**0.5 if c is None else c
    sq = (a.float() - b.float()).pow(2).flatten(1).sum(1)
    return torch.sqrt(sq + c * c) - c


def mse(a: Tensor, b: Tensor) -> Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


__all__ = [
    "Batch",
    "DATA_KINDS",
    "DistillModule",
    "Objective",
    "StudentSpec",
    "copy_net",
    "frozen_copy",
    "make_student",
    "mse",
    "pseudo_huber",
    "randn",
    "uniform_times",
]
