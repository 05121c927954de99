"""Few-step TSDiff students from the core's distillation objectives.

The teacher is a TSDiff Denoiser; its training windows (gluonts' pipeline, with time features as
the net's ``cond``) are the distillation data, so any objective that trains on real data works
(progressive distillation ``pd``, consistency distillation ``cd``, ...). The student inherits the
teacher's ``info["tsdiff"]`` window settings and carries its own step count and sampling rule, so
``tsdiff_predictor(student, GuidanceConfig(solver="auto"))`` forecasts with observation
self-guidance at the student's NFE.
"""

from __future__ import annotations

import os
from typing import Any

from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import DistillConfig, distill, make_objective
from fewstep.core.io import checkpoint_stem
from fewstep.core.train import TrainConfig
from gluonts.dataset.common import Dataset

from .features import training_windows
from .model import tsdiff_config

# Methods whose objective trains on data windows and handles a tensor condition (time features).
TESTED = ("pd", "cd")


def distill_tsdiff(
    teacher: Denoiser,
    train_data: Dataset,
    out: str | os.PathLike,
    method: str = "pd",
    student_steps: int = 4,
    iterations: int = 600,
    batch_size: int = 64,
    lr: float = 2e-4,
    windows: int = 4096,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    save_every: int | None = None,
    save_every_seconds: float | None = 120.0,
    resume: bool = True,
) -> Denoiser:
    """Distil ``teacher`` into a ``student_steps``-step student with ``method``; saves ``out`` (+ card), resumes
    from ``out.work`` if interrupted (same settings only; ``resume=False`` starts over), and returns the
    student (eval mode). ``out`` is a checkpoint stem: ``s``, ``s.json`` and ``s.safetensors`` all name ``s``.
    The resumable state is written every ``save_every`` iterations or ``save_every_seconds`` of work."""
    cfg = tsdiff_config(teacher)
    objective = make_objective(method, **(options or {}))
    if objective.data != "real":
        raise ValueError(
            f"{method} trains on {objective.data!r} data; TSDiff's windows need their time features, which only "
            f"methods trained on real windows see. Use one of: {', '.join(TESTED)} (or another real-data method)"
        )
    x, cond = training_windows(cfg, train_data, windows, seed)
    train = TrainConfig(iterations=iterations, batch_size=batch_size, lr=lr, warmup_iterations=min(50, iterations), ema_decay=0.995,
                        seed=seed, progress=progress, save_every=save_every, save_every_seconds=save_every_seconds)
    out = checkpoint_stem(out)
    res = distill(teacher.eval(), objective, DistillConfig(student_steps=student_steps, train=train), out, data=(x, cond),
                  work_dir=out.with_name(out.name + ".work"), card={"teacher_tsdiff": cfg.to_dict()}, progress=progress,
                  resume=resume)
    student = res.student.eval()
    tsdiff_config(student)  # the window settings ride along from the teacher's info
    return student


__all__ = ["TESTED", "distill_tsdiff"]
