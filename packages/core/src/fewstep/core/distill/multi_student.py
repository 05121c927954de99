"""Multi-student distillation (MSD): K one-step students, each owning a slice of the class labels.

Song et al. 2024, "Multi-student Diffusion Distillation for Better One-step Generators". The
conditioning space is partitioned; student j is distilled on its classes only, so each (possibly
smaller) student has less to model; at inference a router sends every sample to the student that
owns its condition, so a sample still costs one student call.

- :class:`MSD` is the per-student objective: one-step distribution matching (DMD, Yin et al. 2024,
  Eq. 7-8, ``critic.dmd_direction``) with a fake score trained on the student's own samples, where
  the batch's labels are replaced by labels drawn from the student's slice, so student and fake
  score only ever see their own classes (the runner's data-free labels cover all classes).
- :func:`distill_multi_student` runs the core ``distill()`` once per student and returns a
  :class:`StudentRouter`; students can be narrower than the teacher (``width_mult``: the teacher's
  UNet with fewer channels, fresh weights, as SlimFlow's student, ``reflow.smaller_net``).
- :class:`StudentRouter` holds the K student Denoisers and a class -> student table, and speaks the
  Denoiser interface (``forward(x, t, cond) -> x0``, schedule, sampler, steps), so
  ``fewstep.core.solvers.sample`` and the metrics take it as they take one student.
- Checkpoint (:func:`save_router` / :func:`load_router`): ``<out>.student<j>.safetensors/.json``,
  one ordinary Denoiser checkpoint per student, then ``<out>.safetensors/.json``: the router card
  (kind "student-router", partition, student file names and their SHA-256) with the owner table as
  its one tensor. Every file is written atomically, the router card last, so a card never points
  at a half-written student.

Simplified against the paper: no GAN term and no teacher-score-matching pretraining stage for the
smaller students (they start from fresh weights, or the teacher's when ``width_mult`` = 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..card import ModelCard
from ..checkpoints import load_denoiser, model_card_from_json, save_denoiser
from ..denoiser import Denoiser
from ..io import CheckpointError, checkpoint_paths, content_id, load_weights, read_card, save_weights
from ..nets import is_fewstep_net
from ..parts import STUDENT, Part
from .base import Batch, DistillModule, Objective, StudentSpec, copy_net
from .critic import dmd_direction, dmd_loss, fake_score_loss, make_fake_score
from .reflow import smaller_net
from .rollout import student_samples
from .runner import DistillConfig, DistillResult, distill


def round_robin(num_classes: int, num_students: int) -> list[list[int]]:
    """Class c goes to student c mod K."""
    if not 1 <= num_students <= num_classes:
        raise ValueError(f"num_students={num_students} must be in [1, num_classes={num_classes}]")
    return [list(range(j, num_classes, num_students)) for j in range(num_students)]


def check_partition(partition, num_classes: int) -> list[list[int]]:
    """Every class 0..num_classes-1 owned by exactly one student; each student owns at least one."""
    parts = [sorted(int(c) for c in p) for p in partition]
    flat = sorted(c for p in parts for c in p)
    if any(not p for p in parts) or flat != list(range(num_classes)):
        raise ValueError(
            f"partition {parts} must split the classes 0..{num_classes - 1} into non-empty disjoint slices "
            f"(or pass num_students for a round-robin split)"
        )
    return parts


# -- the per-student objective ------------------------------------------------------------------------
@dataclass(frozen=True)
class MSD(Objective):
    """One MSD student: one-step DMD on its own classes ``classes`` (module doc); ``classes=()`` owns
    every class (K = 1: plain one-step DMD, what ``make_objective("msd")`` gives).

    ``width_mult`` < 1: a narrower UNet with fresh weights (needs a fewstep UNet teacher, or pass
    ``student_net``); 1: a copy of the teacher. ``critic_lr_scale``: the fake score's lr multiple.
    """

    name: ClassVar[str] = "msd"
    data: ClassVar[str] = "none"
    paper: ClassVar[str] = (
        "Song et al. 2024, Multi-student Diffusion Distillation for Better One-step Generators, arXiv:2410.23274"
    )

    classes: tuple[int, ...] = ()
    width_mult: float = 1.0
    critic_lr_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if self.classes and (min(self.classes) < 0 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes={self.classes}: give the student's own class labels (distinct, >= 0)")
        if not 0 < self.width_mult <= 1:
            raise ValueError(f"width_mult={self.width_mult} must be in (0, 1]: students are at most the teacher's size")
        if self.critic_lr_scale <= 0:
            raise ValueError(f"critic_lr_scale={self.critic_lr_scale} must be > 0")

    def student_spec(self, teacher: Denoiser) -> StudentSpec:
        if teacher.num_classes and self.classes and max(self.classes) >= teacher.num_classes:
            raise ValueError(f"classes={self.classes} exceed the teacher's {teacher.num_classes} classes")
        if self.width_mult == 1.0:
            return StudentSpec(net=copy_net(teacher.net))
        # A foreign teacher net gives None here: then pass student_net (distill_multi_student checks it).
        return StudentSpec(net=smaller_net(teacher.net, self.width_mult, None))

    def setup(self, module: DistillModule) -> None:
        if not module.teacher.num_classes:
            raise ValueError("MSD partitions class labels: the teacher must be class-conditional (num_classes > 0)")
        module.critic = make_fake_score(module.teacher).requires_grad_(True)

    def parts(self, module: DistillModule) -> tuple[Part, ...]:
        return (Part(STUDENT), Part("critic", lr_scale=self.critic_lr_scale))

    def own(self, module: DistillModule, n: int, generator: torch.Generator, device) -> Tensor:
        """n labels drawn uniformly from this student's slice (the batch's own labels cover every class)."""
        own = torch.tensor(self.classes or range(module.teacher.num_classes), dtype=torch.long)
        return own[torch.randint(0, len(own), (n,), generator=generator)].to(device)

    def loss(self, module: DistillModule, batch: Batch, generator: torch.Generator) -> Tensor:
        p = next(iter(module.student.parameters()))
        cond = self.own(module, batch.size, generator, p.device)
        batch = Batch(x0=None, cond=cond, n=batch.size)
        x, _ = student_samples(module, batch.size, batch.cond, generator)  # one step from noise at t_max
        direction = dmd_direction(module.teacher, module.critic, x, cond, generator, module.teacher_guidance)
        return dmd_loss(x, direction) + fake_score_loss(module.critic, x.detach(), cond, generator)


# -- the router ----------------------------------------------------------------------------------------
class StudentRouter(nn.Module):
    """K student Denoisers behind one Denoiser interface: sample i goes to the student owning cond[i].

    Students must share schedule, sample shape, number of classes, step count and sampling rule.
    """

    def __init__(self, students: list[Denoiser], partition: list[list[int]], provenance: dict[str, Any] | None = None):
        super().__init__()
        if len(students) != len(partition) or not students:
            raise ValueError(f"{len(students)} students for a partition of {len(partition)} slices")
        first = students[0]
        for s in students[1:]:
            same = (s.schedule, s.sample_shape, s.num_classes, s.card.student_steps, s.card.sampler, s.prediction)
            if same != (
                first.schedule,
                first.sample_shape,
                first.num_classes,
                first.card.student_steps,
                first.card.sampler,
                first.prediction,
            ):
                raise ValueError(
                    "students must share schedule, prediction, sample_shape, num_classes, steps and sampler"
                )
        self.partition = check_partition(partition, first.num_classes)
        self.students = nn.ModuleList(students)
        owner = torch.empty(first.num_classes, dtype=torch.long)
        for j, part in enumerate(self.partition):
            owner[part] = j
        self.register_buffer("owner", owner)
        self.schedule, self.prediction = first.schedule, first.prediction
        self.sample_shape, self.num_classes = first.sample_shape, first.num_classes
        self.boundary, self.clip_x0, self.guidance, self.reparam = None, first.clip_x0, first.guidance, None
        # Samples like its students: their step count and rule, the router's own provenance.
        self.card = ModelCard(first.card.student_steps, first.card.sampler, provenance or {})
        self.nfe = 0

    @property
    def net_evals(self) -> int:
        return sum(s.net_evals for s in self.students)

    @property
    def sample_evals(self) -> int:
        return sum(s.sample_evals for s in self.students)

    def reset_counters(self) -> None:
        self.nfe = 0
        for s in self.students:
            s.reset_counters()

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.schedule.alpha(t), self.schedule.sigma(t)

    def route(self, cond: Tensor) -> Tensor:
        """Owner student index per sample (B,)."""
        if cond is None or cond.dtype not in (torch.int64, torch.int32):
            raise ValueError("a StudentRouter routes by class label: pass cond as integer labels")
        if bool(((cond < 0) | (cond >= self.num_classes)).any()):
            raise ValueError(
                f"labels must be in 0..{self.num_classes - 1} (each owned by one student); got {cond.tolist()}"
            )
        return self.owner.to(cond.device)[cond.long()]

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, guidance: float | None = None, kind: str = "x0"
    ) -> Tensor:
        who = self.route(cond)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        self.nfe += 1
        out = None
        for j, student in enumerate(self.students):
            idx = (who == j).nonzero(as_tuple=True)[0]
            if len(idx) == 0:
                continue
            y = student(x[idx], t[idx], cond[idx], guidance, kind)
            out = torch.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype, device=y.device) if out is None else out
            out[idx] = y
        return out

    predict = forward


def save_router(router: StudentRouter, path: str | os.PathLike, card: dict | None = None) -> None:
    """Write the students, then the router card (module doc for the layout)."""
    path = Path(path)
    files = []
    for j, s in enumerate(router.students):
        stem = path.with_name(f"{path.name}.student{j}")
        save_denoiser(s, stem)
        w = checkpoint_paths(stem)[0]
        files.append({"stem": stem.name, "sha256": content_id(read_card(stem)), "bytes": w.stat().st_size})
    meta = {
        **(card or {}),
        "kind": "student-router",
        "partition": router.partition,
        "students": files,
        "num_classes": router.num_classes,
        "sample_shape": list(router.sample_shape) if router.sample_shape else None,
        "card": router.card.to_dict(),
    }
    save_weights(path, {"owner": router.owner}, meta)


def load_router(path: str | os.PathLike, device: str | torch.device = "cpu") -> StudentRouter:
    """Rebuild a StudentRouter written by :func:`save_router`; mismatches raise CheckpointError."""
    path = Path(path)
    tensors, card = load_weights(path)
    if card.get("kind") != "student-router":
        raise CheckpointError(f"{checkpoint_paths(path)[1]}: holds a {card.get('kind')!r}, not a student-router")
    students = []
    for entry in card["students"]:
        stem = path.with_name(entry["stem"])
        if content_id(read_card(stem)) != entry["sha256"]:
            raise CheckpointError(f"{stem}: student checkpoint does not match the router card (replaced or stale)")
        students.append(load_denoiser(stem, device))
    router = StudentRouter(students, card["partition"], provenance=model_card_from_json(card, str(path)).provenance)
    if not torch.equal(router.owner, tensors["owner"]):
        raise CheckpointError(f"{checkpoint_paths(path)[0]}: owner table disagrees with the card's partition")
    return router.to(device).eval()


# -- training ------------------------------------------------------------------------------------------
def distill_multi_student(
    teacher: Denoiser,
    cfg: DistillConfig,
    out: str | os.PathLike | None,
    partition: list[list[int]] | None = None,
    width_mult: float = 1.0,
    num_students: int | None = None,
    student_net: Callable[[int], nn.Module] | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **objective_opts,
) -> tuple[StudentRouter, list[DistillResult]]:
    """Distil ``teacher`` into K one-step students (``partition`` of its classes, or a round-robin
    split into ``num_students``), one core ``distill()`` per student, each on its own labels; save
    the router at ``out`` (None: save nothing, then ``work_dir`` is required). ``student_net(j)``
    builds student j's net (for foreign-net teachers, or any custom student); each student resumes
    from ``<work_dir>/student<j>``."""
    if not teacher.num_classes:
        raise ValueError("multi-student distillation splits class labels: the teacher must be class-conditional")
    if cfg.student_steps != 1:
        raise ValueError(f"cfg.student_steps={cfg.student_steps}: MSD students are one-step generators (DistillConfig(student_steps=1))")
    if partition is None:
        partition = round_robin(teacher.num_classes, num_students or min(2, teacher.num_classes))
    partition = check_partition(partition, teacher.num_classes)
    if out is None and work_dir is None:
        raise ValueError("give out (the router checkpoint to write) or at least work_dir (for resumable state)")
    work = Path(work_dir) if work_dir else Path(f"{out}.work")
    students, results = [], []
    for j, part in enumerate(partition):
        obj = MSD(classes=tuple(part), width_mult=width_mult, **objective_opts)
        net = student_net(j) if student_net is not None else None
        if net is None and width_mult < 1 and not is_fewstep_net(teacher.net):
            raise ValueError(
                "width_mult < 1 needs a fewstep UNet teacher; for other nets pass student_net=lambda j: ..."
            )
        res = distill(
            teacher,
            obj,
            cfg,
            None,
            work_dir=work / f"student{j}",
            progress=progress,
            student_net=net,
            card={"student_index": j, "classes": list(part)},
        )
        res.student.card = res.student.card.with_provenance(msd={"student": j, "classes": list(part), "width_mult": width_mult})
        students.append(res.student)
        results.append(res)
    router = StudentRouter(
        students, partition, provenance={"distilled_by": "msd", "width_mult": width_mult, **dict(teacher.card.provenance)}
    )
    if out is not None:
        save_router(router, out, card={"distill_config": {"student_steps": cfg.student_steps, "iterations": cfg.train.iterations}})
    return router.eval(), results


__all__ = [
    "MSD",
    "StudentRouter",
    "check_partition",
    "distill_multi_student",
    "load_router",
    "round_robin",
    "save_router",
]
