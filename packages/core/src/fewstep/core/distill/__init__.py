"""Distillation: few-step students from a teacher Denoiser, every method an Objective for one loop.

``distill(teacher, make_objective("cd"), DistillConfig(student_steps=4), out)`` trains and saves a
student; ``OBJECTIVES`` maps each method name to its Objective class. See docs/distillation.md.
"""

from .base import Batch, DistillModule, Objective, StudentSpec, make_student, student_for, student_reparam, uniform_times
from .registry import OBJECTIVES, make_objective, methods, objective_class
from .runner import DistillConfig, DistillResult, distill
from .trajectories import TrajectoryConfig, cached_trajectories, teacher_trajectories

__all__ = [
    "Batch",
    "DistillConfig",
    "DistillModule",
    "DistillResult",
    "OBJECTIVES",
    "Objective",
    "StudentSpec",
    "TrajectoryConfig",
    "cached_trajectories",
    "distill",
    "make_objective",
    "make_student",
    "student_for",
    "student_reparam",
    "methods",
    "objective_class",
    "teacher_trajectories",
    "uniform_times",
]
