"""card.Reparam: a student of another parametrisation keeps its teacher's function.

The defect it fixes: a v student of an eps teacher used to re-read the copied eps weights as v, so
it started as x0 = alpha x - sigma eps_teacher (noise, not the teacher's prediction)."""

import copy

import pytest
import torch

from fewstep.core.card import CardError, Reparam
from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.distill import make_objective, student_for
from fewstep.core.distill.base import uniform_times

from .tiny import tiny_denoiser, tiny_unet_denoiser

PREDICTIONS = ("eps", "x0", "v", "flow")


def _pair(src: str, dst: str, floor: float = 0.0):
    """A teacher predicting ``src`` and a student on a copy of its net that converts to ``dst``."""
    teacher = tiny_denoiser()
    teacher.prediction = src
    teacher.clip_x0 = None
    student = Denoiser(copy.deepcopy(teacher.net), teacher.schedule, dst, sample_shape=teacher.sample_shape,
                       num_classes=3, reparam=Reparam(src, floor))
    return teacher.eval(), student.eval()


def _inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64).float(), torch.arange(n) % 3


@pytest.mark.parametrize("src", PREDICTIONS)
@pytest.mark.parametrize("dst", PREDICTIONS)
def test_exact_conversion_keeps_the_teachers_function(src, dst):
    teacher, student = _pair(src, dst)
    x, y = _inputs()
    t = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)  # away from t_min, where x0 -> eps divides by sigma ~ 0
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, y), teacher(x, t, y), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(student(x, t, y, kind="eps"), teacher(x, t, y, kind="eps"), rtol=1e-4, atol=1e-4)


def test_floored_eps_conversion_is_exact_below_the_floor_and_a_faint_copy_above():
    floor = 0.05
    teacher, student = _pair("eps", "v", floor)
    x, y = _inputs()
    sched = teacher.schedule
    with torch.no_grad():
        t_low = torch.full((6,), 0.5, dtype=torch.float64)
        assert float(sched.alpha(t_low[:1])) > floor
        torch.testing.assert_close(student(x, t_low, y), teacher(x, t_low, y), rtol=1e-4, atol=1e-4)
        t_max = torch.full((6,), sched.t_max, dtype=torch.float64)
        a = float(sched.alpha(t_max[:1]))
        assert a < floor  # 0.0064 on the VP-linear schedule
        # x0 = (x - sigma eps) / max(alpha, floor) = (alpha / floor) x0_teacher, up to the v round trip
        eps = teacher(x, t_max, y, kind="eps")
        s = float(sched.sigma(t_max[:1]))
        x0_floored = (x - s * eps) / floor
        v = a * eps - s * x0_floored
        torch.testing.assert_close(student(x, t_max, y, kind="v"), v, rtol=1e-4, atol=1e-4)


def test_floored_conversion_bounds_the_gain_of_the_net_output_at_t_max():
    """d x0 / d eps_net at t_max: 1/alpha ~ 160 exactly, at most ~1/floor floored (the t_max fix)."""
    sched = tiny_denoiser().schedule
    x, y = _inputs(2)
    t = torch.full((2,), sched.t_max, dtype=torch.float64)

    def gain(floor):
        teacher, student = _pair("eps", "v", floor)
        bump = torch.zeros_like(x)
        bump[:, 0, 0, 0] = 1e-3

        class Shifted(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, *a, **k):
                return self.net(*a, **k) + bump

        moved = copy.deepcopy(student)
        moved.net = Shifted(moved.net)
        with torch.no_grad():
            return float((moved(x, t, y) - student(x, t, y)).abs().max() / 1e-3)

    a = float(sched.alpha(t[:1]))
    assert gain(0.0) == pytest.approx(float(sched.sigma(t[:1])) / a, rel=1e-2)  # ~156
    assert gain(0.05) <= 1.01 / 0.05  # sigma^2 / floor + sigma alpha


def test_reparam_round_trips_through_a_checkpoint_and_bad_cards_are_refused(tmp_path):
    teacher = tiny_unet_denoiser()  # a fewstep UNet: checkpoints rebuild it from its config
    student = Denoiser(copy.deepcopy(teacher.net), teacher.schedule, "v", sample_shape=teacher.sample_shape,
                       num_classes=teacher.num_classes, reparam=Reparam("eps", 0.05)).eval()
    save_denoiser(student, tmp_path / "s")
    back = load_denoiser(tmp_path / "s")
    assert back.reparam == Reparam("eps", 0.05) and back.prediction == "v"
    x, y = torch.randn(6, *teacher.sample_shape), torch.arange(6) % 3
    t = torch.full((6,), 0.97, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, y), student(x, t, y))
    for bad in ({"net_prediction": "score", "alpha_floor": 0.0}, {"net_prediction": "eps", "alpha_floor": 1.5},
                {"net_prediction": "eps"}):
        with pytest.raises(CardError, match="reparam"):
            Reparam.from_dict(bad)


@pytest.mark.parametrize("method", ["dmd", "cd", "pd", "sim"])
def test_students_of_eps_teachers_start_as_the_teacher_on_their_own_grid(method):
    """The runner's student (student_for) predicts v, converted from the copied eps net: at every
    grid time with alpha above the floor it returns the teacher's x0, and it is no longer eps at
    t_max (where eps is ill-posed)."""
    teacher = tiny_denoiser().eval()
    teacher.clip_x0 = None
    obj = make_objective(method)
    steps = 2 if method == "pd" else 4
    student = student_for(teacher, obj, steps).eval()
    assert student.prediction == "v" and student.reparam == Reparam("eps", 0.05)
    x, y = _inputs()
    grid = [t for t in uniform_times(teacher.schedule, steps) if t > 0]
    with torch.no_grad():
        for t in grid:
            tt = torch.full((6,), t, dtype=torch.float64)
            if float(teacher.schedule.alpha(tt[:1])) >= 0.05:
                torch.testing.assert_close(student(x, tt, y), teacher(x, tt, y), rtol=1e-4, atol=1e-4)
            else:  # t_max: a faint copy of the teacher's x0, not noise
                s, te = student(x, tt, y), teacher(x, tt, y)
                cos = torch.nn.functional.cosine_similarity(s.flatten(), te.flatten(), dim=0)
                assert float(cos) > 0.99


def test_a_resume_with_another_conversion_floor_is_refused(tmp_path):
    from fewstep.core.distill import DistillConfig, TrajectoryConfig, distill
    from fewstep.core.train import TrainConfig

    teacher = tiny_unet_denoiser()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(16, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (16,), generator=g))

    def cfg(floor):
        train = TrainConfig(iterations=2, batch_size=4, lr=1e-4, warmup_iterations=1, save_every=1, progress=False)
        return DistillConfig(student_steps=1, train=train, alpha_floor=floor, trajectories=TrajectoryConfig(n=8, num_steps=4, batch_size=8))

    distill(teacher, make_objective("cd"), cfg(0.05), None, data=data, work_dir=tmp_path, progress=False)
    with pytest.raises(Exception, match=r"other settings: card.reparam.alpha_floor: 0.05 -> 0.2"):
        distill(teacher, make_objective("cd"), cfg(0.2), None, data=data, work_dir=tmp_path, progress=False)
