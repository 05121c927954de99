"""Distil a shipped (or saved) image teacher into a few-step student and report what it costs.

``run_distill("cd", "digits-teacher", student_steps=4, out="runs/cd4")`` trains with the core's objective
on the teacher's dataset, evaluates the student with its own sampling rule (dFD, accuracy, recall,
NFE, time per sample) beside the teacher at the same NFE, and writes ``out.report.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, Callable

from fewstep.core.checks import SaveEvery
from fewstep.core.distill import DistillConfig, TrajectoryConfig, distill, make_objective
from fewstep.core.intervals import Metric, compare
from fewstep.core.io import write_text_atomic
from fewstep.core.train import TrainConfig

from .data import load_dataset
from .evaluate import EvalConfig, dataset_of, evaluate_denoiser
from .registry import load_model

# The shared budget of the benchmark: same iterations, batch and optimiser for every method.
BUDGET = TrainConfig(iterations=600, batch_size=64, lr=5e-5, warmup_iterations=50, ema_decay=0.999)
TRAJECTORIES = {"digits": TrajectoryConfig(n=4096, num_steps=16), "shapes": TrajectoryConfig(n=1024, num_steps=16, batch_size=128)}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as JSON when they parse (numbers, lists, true)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"option {p!r} must look like key=value, e.g. --option ema_decay=0.95")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def run_distill(
    method: str,
    teacher: str | os.PathLike = "digits-teacher",
    student_steps: int = 4,
    out: str | os.PathLike = "runs/student",
    iterations: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    options: dict[str, Any] | None = None,
    work_dir: str | os.PathLike | None = None,
    eval_n: int = 500,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    trajectories: int | None = None,
    reward: Callable | str | None = None,
    save_every: SaveEvery | None = None,
    resume: bool = True,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Train, save and evaluate one student; returns (and writes to ``out.report.json``) the report.

    ``trajectories`` overrides how many teacher trajectories trajectory-based methods generate.
    ``reward``: for methods that maximise one (``flash-dmd`` with reward_weight > 0), a callable
    (x, cond) -> (B,) or ``"classifier"`` for the teacher dataset's ``classifier_reward``.
    """
    student_eval = EvalConfig(n=eval_n, seed=seed)  # checked now, not after training
    teacher_eval = EvalConfig(solver="dpmpp_2m", num_steps=student_steps, n=eval_n, seed=seed, denoise_to_zero=True)
    den = load_model(teacher)
    dataset = dataset_of(den)
    objective = make_objective(method, **(options or {}))
    train_cfg = replace(BUDGET, seed=seed, progress=progress, max_seconds=max_seconds, **(save_every or SaveEvery()).fields(),
                        **{k: v for k, v in {"iterations": iterations, "batch_size": batch_size, "lr": lr}.items() if v is not None})
    traj = TRAJECTORIES.get(dataset, TrajectoryConfig())
    if trajectories is not None:
        traj = replace(traj, n=trajectories, batch_size=min(traj.batch_size, trajectories))
    cfg = DistillConfig(student_steps=student_steps, train=train_cfg, trajectories=traj)
    data = load_dataset(dataset, "train") if objective.data == "real" else None
    if reward == "classifier":
        from .rewards import classifier_reward

        reward = classifier_reward(dataset)
    elif isinstance(reward, str):
        raise ValueError(f"reward={reward!r}: give a callable (x, cond) -> (B,) or 'classifier'")
    log(f"distilling {teacher} with {method} into a {student_steps}-step student ({train_cfg.iterations} iterations, batch {train_cfg.batch_size})")
    res = distill(den, objective, cfg, out, data=data, work_dir=work_dir, card={"teacher": str(teacher)}, progress=progress,
                  reward=reward, resume=resume)
    student = res.student
    q = evaluate_denoiser(student, student_eval)
    base = evaluate_denoiser(den, teacher_eval)
    report = {
        "method": method,
        "teacher": str(teacher),
        "student_steps": student_steps,
        "student": _quality(q),
        "teacher_same_nfe": _quality(base),
        "train_seconds": round(res.seconds, 1),
        "train_iterations": int(student.card.provenance.get("iterations", train_cfg.iterations)),
        "max_seconds": train_cfg.max_seconds,
        "teacher_sample_evals": int(student.card.provenance.get("teacher_sample_evals", 0)),
        "batch_size": train_cfg.batch_size,
        "peak_bytes": res.peak_bytes,
        "peak_kind": res.peak_kind,
        "resumed_from": res.resumed_from,
        "objective": objective.describe(),
        "checkpoint": str(out),
    }
    sm, tm = ({k: Metric.from_dict(v) for k, v in d["metrics"].items()} for d in (q, base))
    report["verdicts_vs_teacher_same_nfe"] = {k: compare(m, tm[k]) for k, m in sm.items() if k in tm}
    write_text_atomic(f"{out}.report.json", json.dumps(report, indent=2))
    log(
        f"{method} {student_steps}-step student (n = {eval_n}, 95% intervals): dFD {sm['dfd'].format()} | "
        f"accuracy {sm['accuracy'].format()} | recall {sm['recall'].format()} | NFE {q['nfe']:.0f} | "
        f"{q['seconds_per_sample'] * 1e3:.2f} ms/sample | trained {res.seconds:.0f} s ({report['train_iterations']} iterations); "
        f"teacher (dpmpp_2m) at {student_steps} NFE: dFD {tm['dfd'].format()}: the student is "
        f"{report['verdicts_vs_teacher_same_nfe']['dfd']}".replace("is not distinguishable", "is not distinguishable from it")
    )
    return report


def _quality(r: dict) -> dict:
    return {k: r[k] for k in ("dfd", "accuracy", "precision", "recall", "nfe", "seconds_per_sample", "solver", "steps", "metrics")}
