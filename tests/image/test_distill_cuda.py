"""Every distillation method trains and samples on a CUDA device (skipped without one).

The CPU tests never see a device mismatch (a CPU tensor met by a CUDA one); the first GPU
benchmark found one in ArcFlow's init. Two iterations of each method on the shipped digits teacher.
"""

import math

import pytest
import torch

from fewstep.core.distill import DistillConfig, TrajectoryConfig, distill, make_objective, methods
from fewstep.core.train import TrainConfig
from fewstep.image.data import load_dataset
from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
from fewstep.image.registry import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method", methods())
def test_method_trains_and_samples_on_cuda(method, tmp_path):
    teacher = load_model("digits-teacher", device="cuda")
    objective = make_objective(method)
    steps = 4 if method in ("pd", "guided-pd", "mlcm") else 1
    cfg = DistillConfig(student_steps=steps, train=TrainConfig(iterations=2, batch_size=8, lr=1e-5, warmup_iterations=1, save_every=1, progress=False),
                        trajectories=TrajectoryConfig(n=16, num_steps=4, batch_size=16))
    data = load_dataset("digits", "train") if objective.data == "real" else None
    res = distill(teacher, objective, cfg, tmp_path / method, data=data, work_dir=tmp_path / "work")
    assert next(res.student.parameters()).is_cuda
    assert res.peak_kind.startswith("cuda") and res.peak_bytes > 0
    r = evaluate_denoiser(res.student, EvalConfig(n=20))
    assert math.isfinite(r["dfd"]) and r["nfe"] == steps
