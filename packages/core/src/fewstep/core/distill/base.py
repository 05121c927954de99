"""The contract every distillation objective follows, and the module the one train loop trains.

An :class:`Objective` is a frozen dataclass of hyperparameters with three jobs:

- ``student_spec(teacher)``: what the student is (a copy of the teacher's net, or a smaller one;
  its schedule, parametrisation, consistency boundary, and guidance input);
- ``setup(module)``: extra trainable or frozen parts (an EMA target, a fake-score critic, a GAN
  head), attached to the :class:`DistillModule` so they are checkpointed and resumed with it;
- ``loss(module, batch, generator)``: the per-sample loss (B,) for one batch.

``sampler(teacher, steps)`` says how the trained student samples (stored in its card), so
``fewstep.core.solvers.sample`` and every metric take the student as they take the teacher.

The teacher is frozen and not a submodule (not in checkpoints, not in DDP's parameter list).
``DistillModule.forward`` runs the objective, so under torchrun the DDP wrapper's forward is the
objective and gradients are synchronised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser, _bcast
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
    boundary: dict[str, float] | None = None  # consistency skip/out parametrisation (Denoiser doc)
    guidance_embed: bool = False  # the student takes the CFG scale as an input (guided distillation)


class Objective:
    """Base class; subclasses are frozen dataclasses with a ``name`` and a ``data`` kind."""

    name: ClassVar[str] = "objective"
    data: ClassVar[str] = "real"  # "real" dataset images, "trajectory" teacher trajectories, "none" labels only
    paper: ClassVar[str] = ""
    skips_parameters: ClassVar[bool] = False  # some steps leave parameters without gradients (DDP must know)
    # The student's output parametrisation when the teacher predicts eps (None: the teacher's). A
    # one-step generator needs "v": at t_max the eps form's x0 = (x - sigma eps) / alpha divides by
    # alpha(t_max) ~ 0.006 (VP), and DMD2 at 600 iterations went from dFD 43.6 to 4.7 with "v".
    student_prediction: ClassVar[str | None] = None

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        return StudentSpec()

    def setup(self, module: DistillModule) -> None:
        """Attach extra parts (``module.add_target()``, ``module.critic = ...``)."""

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """{DistillModule submodule name: learning-rate multiple}, e.g. ``{"critic": 2.0}`` for a
        critic trained faster than the student (two time-scale updates); others train at 1x."""
        return {}

    def sampler(self, teacher: Denoiser, steps: int) -> dict[str, Any]:
        """The student's sampling rule: consistency sampling on a uniform grid by default."""
        return {"solver": "consistency", "grid": uniform_times(teacher.schedule, steps)}

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


def make_student(teacher: Denoiser, spec: StudentSpec, steps: int, sampler: dict[str, Any]) -> Denoiser:
    net = spec.net if spec.net is not None else copy_net(teacher.net, spec.guidance_embed)
    return Denoiser(
        net,
        spec.schedule or teacher.schedule,
        spec.prediction or teacher.prediction,
        sample_shape=teacher.sample_shape,
        num_classes=teacher.num_classes,
        guidance=1.0,
        steps=steps,
        clip_x0=teacher.clip_x0,
        sampler=sampler,
        boundary=spec.boundary,
    )


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
    ``critic`` / ``disc`` (trainable). Buffer ``step`` counts training forwards, so progressive
    schedules (step halving, segment schedules) resume where they stopped. ``teacher`` is held
    outside the module tree.
    """

    def __init__(self, teacher: Denoiser, student: Denoiser, objective: Objective, total_steps: int, teacher_guidance: float = 1.0):
        super().__init__()
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.student = student
        self.objective = objective
        self.total_steps = int(total_steps)
        self.teacher_guidance = float(teacher_guidance)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.target: Denoiser | None = None
        objective.setup(self)

    # -- parts ----------------------------------------------------------------------------------
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

    def to(self, *args, **kwargs):
        self.teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return float(self.step) / max(1, self.total_steps)

    # -- the training forward ---------------------------------------------------------------------
    def forward(
        self, x0: Tensor | None, cond: Tensor | None, traj: Tensor | None, traj_t: Tensor | None, generator: torch.Generator, n: int | None = None
    ) -> Tensor:
        batch = Batch(x0=x0, cond=cond, traj=traj, traj_t=traj_t, n=n)
        loss = self.objective.loss(self, batch, generator)
        if self.training:
            self.step += 1
        if loss.ndim != 1 or loss.shape[0] != batch.size:
            raise ValueError(f"{self.objective.name}: loss must be per-sample (B,), got {tuple(loss.shape)}")
        return loss

    @property
    def find_unused_parameters(self) -> bool:
        """For DDP: True when some steps leave parameters without gradients (the objective says)."""
        return bool(getattr(self.objective, "skips_parameters", False))

    def lr_scales(self) -> dict[str, float]:
        """{submodule name: learning-rate multiple} for the train loop's optimiser (the objective's)."""
        return dict(self.objective.lr_scales())

    # -- helpers shared by objectives -------------------------------------------------------------
    @torch.no_grad()
    def teacher_x0(self, x: Tensor, t: Tensor, cond: Tensor | None, guidance: float | None = None) -> Tensor:
        w = self.teacher_guidance if guidance is None else guidance
        return self.teacher(x, t, cond, w)


# -- small shared maths ---------------------------------------------------------------------------
def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Gaussian noise from the loop's generator (CPU), moved to ``like``'s device and dtype."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def noise_to(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_t = alpha(t) x0 + sigma(t) eps, per-sample t (B,)."""
    return _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps


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
    "noise_to",
    "pseudo_huber",
    "randn",
    "uniform_times",
]
