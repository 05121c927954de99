"""The distillation framework: student sampling rules, consistency boundary, guidance input,
teacher trajectories, the runner's resume and checkpoint card, and DDP under torchrun."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ..tiny import tiny_unet_denoiser  # noqa: E402
from .toys import MLPNet, gmm_teacher, sliced_wasserstein  # noqa: E402

from fewstep.core.card import Boundary, ModelCard, SamplerRule  # noqa: E402
from fewstep.core.checkpoints import load_denoiser, save_denoiser  # noqa: E402
from fewstep.core.denoiser import Denoiser  # noqa: E402
from fewstep.core.distill import (  # noqa: E402
    DistillConfig,
    Objective,
    StudentSpec,
    TrajectoryConfig,
    distill,
    make_student,
    make_objective,
    methods,
    teacher_trajectories,
    uniform_times,
)
from fewstep.core.distill.base import mse  # noqa: E402
from fewstep.core.solvers import resolve_rule, sample  # noqa: E402
from fewstep.core.train import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class Regression(Objective):
    """Knowledge distillation (Luhman & Luhman 2021): the student maps the teacher's noise to its
    sample in one step. The simplest trajectory objective; used here to exercise the runner."""

    name = "regression"
    data = "trajectory"

    def sampler(self, teacher, steps):
        return SamplerRule("ddim", uniform_times(teacher.schedule, steps))

    def loss(self, module, batch, generator):
        t = batch.traj_t[:, 0].double()
        return mse(module.student(batch.traj[:, 0], t, batch.cond), batch.x0)


def _cfg(steps=200, **kw):
    return DistillConfig(
        student_steps=1,
        train=TrainConfig(iterations=steps, batch_size=128, lr=3e-3, warmup_iterations=10, progress=False, save_every=50, **kw),
        trajectories=TrajectoryConfig(n=512, num_steps=12, batch_size=512),
    )


def test_registry_lists_the_trajectory_family():
    assert {"pd", "guided-pd", "cd", "mlcm", "hyper-sd", "scott", "slam", "scm", "rcm", "tbcm", "boot", "reflow", "slimflow", "arcflow"} <= set(methods())


def test_registry_lists_the_distribution_family_and_every_method_builds():
    family = {"dmd", "dmd2", "decoupled-dmd", "flash-dmd", "vsd", "sim", "uni-instruct", "disback", "tdm", "mmd-ddm", "msd"}
    assert family <= set(methods())
    for name in methods():
        obj = make_objective(name)
        assert obj.name == name and obj.data in ("real", "trajectory", "none"), name


def test_student_rule_is_what_sample_uses_by_default():
    teacher = tiny_unet_denoiser()
    student = make_student(teacher, StudentSpec(), 2, SamplerRule("consistency", uniform_times(teacher.schedule, 2)))
    spec, steps, grid, _ = resolve_rule(student)
    assert (spec.name, steps) == ("consistency", 2) and grid.tolist() == uniform_times(teacher.schedule, 2)
    spec, steps, _, _ = resolve_rule(teacher)
    assert (spec.name, steps) == ("dpmpp_2m", 20)  # teachers keep the old default
    student.reset_counters()
    x = sample(student, torch.randn(4, 1, 8, 8), cond=torch.arange(4) % 3, generator=torch.Generator().manual_seed(0))
    assert student.nfe == 2 and x.shape == (4, 1, 8, 8)
    # An explicit request still wins over the student's rule.
    assert resolve_rule(student, "ddim", 4)[0].name == "ddim" and resolve_rule(student, "ddim", 4)[1] == 4


def test_consistency_boundary_is_the_identity_at_t_min_and_the_net_at_t_max():
    teacher = tiny_unet_denoiser()
    bnd = Boundary(sigma_data=0.5, timestep_scaling=10.0)
    student = make_student(teacher, StudentSpec(boundary=bnd), 1, SamplerRule("consistency", [1.0, 0.0])).train()
    x = torch.randn(3, 1, 8, 8)
    t_min = torch.full((3,), teacher.schedule.t_min, dtype=torch.float64)
    assert torch.allclose(student(x, t_min, torch.zeros(3, dtype=torch.long)), x, atol=1e-5)
    t_max = torch.ones(3, dtype=torch.float64)
    plain = teacher.train()(x, t_max, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(student(x, t_max, torch.zeros(3, dtype=torch.long)), plain, atol=1e-3)


def test_guidance_embedded_student_is_one_pass_and_starts_as_the_conditional_teacher():
    teacher = tiny_unet_denoiser()
    student = make_student(teacher, StudentSpec(guidance_embed=True), 4, SamplerRule("ddim", uniform_times(teacher.schedule, 4))).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5, dtype=torch.float64), torch.tensor([0, 1])
    student.reset_counters()
    out = student(x, t, y, guidance=3.0)
    assert student.net_evals == 1
    assert torch.allclose(out, teacher(x, t, y, 1.0), atol=1e-5)  # zero-initialised guidance MLP


def test_sampler_and_boundary_round_trip_through_checkpoints(tmp_path):
    teacher = tiny_unet_denoiser()
    rule = SamplerRule("consistency", uniform_times(teacher.schedule, 2))
    bnd = Boundary(sigma_data=0.5, timestep_scaling=10.0)
    student = make_student(teacher, StudentSpec(boundary=bnd, guidance_embed=True), 2, rule)
    save_denoiser(student, tmp_path / "s")
    back = load_denoiser(tmp_path / "s")
    assert back.card.sampler == rule and back.boundary == bnd and back.card.student_steps == 2 and back.guidance_embedded
    x = torch.randn(2, 1, 8, 8)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.allclose(sample(back, x, cond=torch.tensor([0, 1]), generator=g()), sample(student.eval(), x, cond=torch.tensor([0, 1]), generator=g()), atol=1e-5)


def test_student_prediction_overrides_the_output_parametrisation(tmp_path):
    """A one-step generator may predict v (well conditioned at t_max) while the teacher predicts eps."""
    teacher = tiny_unet_denoiser()
    cfg = DistillConfig(student_steps=1, student_prediction="v",
                        train=TrainConfig(iterations=1, batch_size=4, lr=1e-5, warmup_iterations=1, progress=False, save_every=1))
    x, y = torch.randn(8, 1, 8, 8).clamp(-1, 1), torch.arange(8) % 3
    res = distill(teacher, make_objective("cd"), cfg, tmp_path / "s", data=(x, y), progress=False)
    assert res.student.prediction == "v" and load_denoiser(tmp_path / "s").prediction == "v"
    with pytest.raises(ValueError, match="student_prediction"):
        DistillConfig(student_steps=1, student_prediction="score")


def test_recorded_trajectory_ends_at_the_solvers_sample():
    teacher = gmm_teacher()
    cfg = TrajectoryConfig(n=64, num_steps=8, batch_size=64, seed=3)
    tr = teacher_trajectories(teacher, cfg, progress=False)
    assert tr["traj"].shape == (64, 9, 2) and tr["traj_t"][-1] == 0
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    ref = sample(teacher, x_T, "dpmpp_2m", 8, cond=tr["cond"], denoise_to_zero=True)
    assert torch.allclose(tr["traj"][:, -1], ref, atol=1e-5)
    assert torch.allclose(tr["traj"][:, 0], x_T * teacher.schedule.sigma(tr["traj_t"][0].double()).float(), atol=1e-6)


def test_runner_distils_a_one_step_student_and_resumes(tmp_path, monkeypatch):
    teacher = gmm_teacher()
    ref = sample(teacher, torch.randn(512, 2), cond=torch.arange(512) % 4, num_steps=20)
    torch.manual_seed(0)
    before = Denoiser(MLPNet(2, 64, 4), teacher.schedule, "x0", sample_shape=(2,), num_classes=4,
                      card=ModelCard(student_steps=1, sampler=SamplerRule("ddim", uniform_times(teacher.schedule, 1))))
    x_before = sample(before, torch.randn(512, 2), cond=torch.arange(512) % 4)
    # Stopped by SIGTERM after 100 of 200 iterations, then resumed: same weights as one uninterrupted run.
    from fewstep.core import faults
    from fewstep.core.train import Stopped

    torch.manual_seed(0)
    monkeypatch.setenv("FEWSTEP_FAULT", "term:iteration:100")
    faults.reset()
    with pytest.raises(Stopped):
        distill(teacher, Regression(), _cfg(200), None, work_dir=tmp_path / "a", student_net=MLPNet(2, 64, 4), progress=False)
    monkeypatch.delenv("FEWSTEP_FAULT")
    torch.manual_seed(0)
    res = distill(teacher, Regression(), _cfg(200), None, work_dir=tmp_path / "a", student_net=MLPNet(2, 64, 4), progress=False)
    assert res.resumed_from == 100
    torch.manual_seed(0)
    once = distill(teacher, Regression(), _cfg(200), None, work_dir=tmp_path / "b", student_net=MLPNet(2, 64, 4), progress=False)
    for (k, a), b in zip(res.student.state_dict().items(), once.student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    x = sample(res.student, torch.randn(512, 2), cond=torch.arange(512) % 4)
    assert res.student.nfe >= 1
    assert sliced_wasserstein(x, ref) < 0.3 * sliced_wasserstein(x_before, ref)


def test_runner_writes_a_loadable_student_with_its_provenance(tmp_path):
    teacher = tiny_unet_denoiser()
    teacher.card = ModelCard(provenance={"dataset": "toy"})
    cfg = DistillConfig(student_steps=1, train=TrainConfig(iterations=2, batch_size=4, progress=False),
                        trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8))
    res = distill(teacher, Regression(), cfg, tmp_path / "s", progress=False)
    back = load_denoiser(tmp_path / "s")
    assert back.card.provenance["distilled_by"] == "regression" and back.card.provenance["iterations"] == 2
    assert back.card.provenance["peak_bytes"] > 0 and back.card.provenance["distill_config"]["student_steps"] == 1
    assert back.card.sampler.solver == "ddim" and res.student.card.student_steps == 1


def test_real_data_objective_without_data_is_a_clear_error(tmp_path):
    @dataclass(frozen=True)
    class NeedsData(Objective):
        name = "needs-data"

    with pytest.raises(ValueError, match="pass data"):
        distill(tiny_unet_denoiser(), NeedsData(), _cfg(2), tmp_path / "s", progress=False)


@pytest.mark.parametrize("method, strategy", [("cd", "ddp"), ("dmd2", "ddp"), ("cd", "fsdp")])
def test_world_size_2_distils_with_identical_students(tmp_path, method, strategy):
    """DDP, and FSDP2 for an objective marked ``fsdp_ready`` (its student, EMA target and teacher
    each called once per iteration on every rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker), str(tmp_path), method, strategy]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from fewstep.core.io import load_weights

    w0, _ = load_weights(tmp_path / "rank0")
    w1, _ = load_weights(tmp_path / "rank1")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    back = load_denoiser(tmp_path / "student")
    assert back.card.provenance["distilled_by"] == method
