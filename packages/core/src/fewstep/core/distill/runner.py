"""``distill(teacher, objective, config, out)``: one entry point for every distillation objective.

It builds the student from the objective's spec, prepares the data the objective asks for (real
images, cached teacher trajectories, or labels only), trains with the core train loop (DDP under
torchrun, atomic checkpoints, resume), and writes the student as a Denoiser checkpoint whose card
carries its step count and sampling rule.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import save_denoiser
from ..denoiser import Denoiser
from ..locks import writing
from ..prune.cost import SavedTensorBytes
from ..train import TrainConfig, init_distributed, train
from .base import DATA_KINDS, DistillModule, Objective, student_for
from .trajectories import TrajectoryConfig, cached_trajectories


@dataclass(frozen=True)
class DistillConfig:
    """What every distillation run shares; the method's own knobs live on its Objective."""

    student_steps: int  # the student's number of sampling steps (its NFE)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(iterations=1000, batch_size=64, lr=5e-5, warmup_iterations=50, ema_decay=0.999))
    teacher_guidance: float = 1.0
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    use_ema: bool = True  # ship the EMA of the student weights (else the last iterate)
    # The student's output parametrisation when it should differ from the teacher's (None: the
    # objective's default, Objective.student_prediction): "v" or "x0" keep a one-step generator
    # well conditioned at t_max, where an eps-prediction's x0 = (x - sigma eps) / alpha divides by
    # alpha(t_max) ~ 0.006 (VP). The copied net keeps the teacher's function through card.Reparam,
    # whose eps -> x0 inversion divides by max(alpha, alpha_floor): exact where alpha >= the floor
    # (t < 0.77 on the VP-linear schedule), a gain of at most 1 / alpha_floor above it.
    student_prediction: str | None = None
    alpha_floor: float = 0.05

    def __post_init__(self):
        if self.student_steps < 1:
            raise ValueError(f"student_steps={self.student_steps}: a student needs at least 1 sampling step")
        if self.teacher_guidance < 0:
            raise ValueError("teacher_guidance must be >= 0")
        if self.student_prediction not in (None, "eps", "x0", "v", "flow"):
            raise ValueError(f"student_prediction={self.student_prediction!r}: use eps, x0, v or flow (or None: the objective's)")
        if not 0 <= self.alpha_floor < 1:
            raise ValueError(f"alpha_floor={self.alpha_floor} must be in [0, 1) (0: the exact conversion)")


@dataclass
class DistillResult:
    student: Denoiser
    seconds: float
    losses: list[float]
    peak_bytes: int  # CUDA: max allocated; CPU: bytes autograd saves for one training step
    peak_kind: str
    resumed_from: int


def _training_data(module: DistillModule, objective: Objective, cfg: DistillConfig, data, work: Path, progress: bool) -> list:
    teacher = module.teacher
    if objective.data == "real":
        if data is None:
            raise ValueError(f"{objective.name} trains on real data: pass data=(x0, labels)")
        x0, cond = data
        if tuple(x0.shape[1:]) != tuple(teacher.sample_shape or x0.shape[1:]):
            raise ValueError(f"data has shape {tuple(x0.shape[1:])} but the teacher samples {teacher.sample_shape}")
        return [x0, cond if teacher.num_classes else None, None, None]
    if objective.data == "trajectory":
        tr = cached_trajectories(teacher, cfg.trajectories, work / "trajectories", progress)
        traj = tr["traj"]
        return [traj[:, -1], tr.get("cond"), traj, tr["traj_t"].expand(traj.shape[0], -1)]
    n = 4096
    labels = torch.arange(n) % max(1, teacher.num_classes)
    return [torch.zeros(n, 0), labels if teacher.num_classes else None, None, None]


def _peak(module: DistillModule, data: list, device, generator_seed: int, no_data: bool) -> tuple[int, str]:
    """Training memory of one CPU step (batch 8): the bytes autograd saves for the backward pass."""
    idx = torch.arange(min(8, data[0].shape[0]))
    batch = [None if d is None else d[idx].to(device) for d in data]
    gen = torch.Generator().manual_seed(generator_seed)
    state = {k: v.clone() for k, v in module.state_dict().items()}  # the probe must not move EMA targets or rounds
    n = batch[0].shape[0]
    if no_data:
        batch[0] = None
    with SavedTensorBytes(ignore=list(module.parameters())) as m:
        loss = module(*batch, gen, n=n).mean()
    del loss
    module.load_state_dict(state)
    return m.bytes, "autograd saved bytes (CPU, batch 8)"


def distill(
    teacher: Denoiser,
    objective: Objective,
    cfg: DistillConfig,
    out: str | os.PathLike | None,
    data: tuple[Tensor, Tensor | None] | None = None,
    work_dir: str | os.PathLike | None = None,
    card: dict | None = None,
    progress: bool = True,
    student_net: torch.nn.Module | None = None,
    reward=None,
    resume: bool = True,
) -> DistillResult:
    """Distil ``teacher`` into a ``cfg.student_steps``-step student with ``objective``; save it at ``out``.

    ``student_net`` replaces the objective's default student net (a copy of the teacher's).
    ``reward``: a callable (x, cond) -> (B,) attached as ``module.attachments["reward"]`` for
    objectives that maximise one (``rewards.py``); neither trained nor checkpointed.
    Resumes from ``work_dir`` (default ``out.work``) when it holds a checkpoint of the same run
    (``resume=False``: discard it); holds the work dir's and ``out``'s write locks meanwhile.
    ``out=None`` saves nothing (then ``work_dir`` is required); for students on foreign nets.
    """
    if out is None and work_dir is None:
        raise ValueError("give out (the student checkpoint to write) or at least work_dir (for resumable state)")
    if objective.data not in DATA_KINDS:
        raise ValueError(f"{objective.name}: data kind {objective.data!r} not in {DATA_KINDS}")
    if teacher.sample_shape is None:
        raise ValueError("the teacher needs a sample_shape (Denoiser(..., sample_shape=...)) to be distilled")
    work = Path(work_dir) if work_dir else Path(f"{out}.work")
    with writing(work, f"the distillation run in {work}"), (writing(out) if out is not None else contextlib.nullcontext()):
        work.mkdir(parents=True, exist_ok=True)
        return _distill(teacher, objective, cfg, out, data, work, card, progress, student_net, reward, resume)


def _distill(teacher, objective, cfg, out, data, work: Path, card, progress, student_net, reward, resume) -> DistillResult:
    rank, _, device = init_distributed()
    teacher = teacher.to(device)
    student = student_for(teacher, objective, cfg.student_steps, prediction=cfg.student_prediction,
                          alpha_floor=cfg.alpha_floor, net=student_net)
    module = DistillModule(teacher, student, objective, cfg.train.iterations, cfg.teacher_guidance).to(device)
    if reward is not None:
        if not callable(reward):
            raise TypeError(f"reward must be a callable (x, cond) -> (B,), got {type(reward).__name__}")
        module.attach("reward", reward)  # not a submodule: not trained, checkpointed or synchronised
    teacher.reset_counters()  # the card reports the teacher evaluations this run spent (trajectories included)
    train_data = _training_data(module, objective, cfg, data, work, progress and rank == 0)
    no_data = objective.data == "none"
    mem, mem_kind = _peak(module, train_data, device, cfg.train.seed, no_data) if device.type == "cpu" else (0, "")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def loss_fn(model, batch, gen):
        x0, cond, traj, traj_t = batch
        return model(None if no_data else x0, cond, traj, traj_t, gen, n=x0.shape[0])

    run_card = {"made_by": "fewstep.core.distill", **objective.describe(), "student_steps": cfg.student_steps,
                "total_iterations": cfg.train.iterations,  # objectives' schedules depend on it: resume needs the same
                "student_prediction": student.prediction,  # and the student's output (its conversion from the net's)
                "reparam": student.reparam.to_dict() if student.reparam else None,
                **(card or {})}
    t0 = time.perf_counter()
    result = train(module, loss_fn, train_data, cfg.train, work, run_card, resume=resume)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        mem, mem_kind = int(torch.cuda.max_memory_allocated(device)), "cuda max allocated"
    state = result.ema if cfg.use_ema else module.state_dict()
    net_state = {k[len("student.net."):]: v for k, v in state.items() if k.startswith("student.net.")}
    student.net.load_state_dict(net_state)
    teacher_facts = teacher.card.provenance
    trained_w = objective.trained_guidance()
    if trained_w is not None:  # a guidance-input student samples at the scale it was trained for
        student.guidance = float(trained_w[2])
    student.card = student.card.with_provenance(**{
        **{k: v for k, v in teacher_facts.items() if k not in ("final_loss", "train_config", "note")},
        "teacher": teacher_facts.get("name", teacher_facts.get("dataset")),
        "distilled_by": objective.name,
        "objective": objective.describe(),
        "student_steps": cfg.student_steps,
        **({"guidance_range": [float(trained_w[0]), float(trained_w[1])]} if trained_w is not None else {}),
        "iterations": result.iteration,
        "train_seconds": round(seconds, 1),
        "work_seconds": round(result.work_seconds, 1),  # over resumed runs too (what TrainConfig.max_seconds budgets)
        "budget_spent": result.budget_spent,  # stopped by the time budget before cfg.train.iterations
        "teacher_sample_evals": int(teacher.sample_evals),  # samples through the teacher's net, this process (a resumed run counts from its resume)
        "batch_size": cfg.train.batch_size,
        "peak_bytes": mem,
        "peak_kind": mem_kind,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "made_by": "fewstep.core.distill",
        "torch": torch.__version__,
    })
    if rank == 0 and out is not None:
        save_denoiser(student, out, provenance={"distill_config": asdict(cfg)})
    return DistillResult(student.eval(), seconds, result.losses, mem, mem_kind, result.resumed_from)

