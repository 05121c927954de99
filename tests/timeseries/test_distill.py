"""A few-step TSDiff student from the core's distillation: it follows the teacher's many-step sampler
better than the teacher does at the student's step count, and forecasts at its own NFE."""

import pytest
import torch
from fewstep.core.solvers import sample
from fewstep.timeseries import GuidanceConfig, tsdiff_predictor
from fewstep.timeseries.distill import distill_tsdiff
from fewstep.timeseries.features import training_windows
from fewstep.timeseries.model import tsdiff_config


@pytest.fixture(scope="module")
def student(shipped, seasonal, tmp_path_factory):
    return distill_tsdiff(shipped, seasonal.train, tmp_path_factory.mktemp("pd") / "pd4", method="pd", student_steps=4, iterations=120,
                          batch_size=32, windows=512, progress=False)


def test_student_follows_the_teacher_sampler_better_than_the_teacher_at_4_steps(shipped, seasonal, student):
    cfg = tsdiff_config(shipped)
    _, cond = training_windows(cfg, seasonal.train, 128, seed=5)
    noise = torch.randn(128, *shipped.sample_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = sample(shipped, noise, "ddim", 16, "uniform", cond=cond)  # progressive distillation's first teacher
        teacher4 = sample(shipped, noise, "ddim", 4, "uniform", cond=cond)
        student4 = sample(student, noise, cond=cond)  # its own rule: 4 DDIM steps on its trained grid
    err_t, err_s = (teacher4 - target).pow(2).mean().item(), (student4 - target).pow(2).mean().item()
    assert err_s < 0.8 * err_t, (err_s, err_t)


def test_student_carries_the_window_and_forecasts_at_its_own_nfe(shipped, student, seasonal):
    assert student.card.student_steps == 4 and tsdiff_config(student) == tsdiff_config(shipped)
    from gluonts.dataset.common import ListDataset

    one = ListDataset(list(seasonal.test)[:1], freq=seasonal.freq)
    student.reset_counters()
    forecasts = list(tsdiff_predictor(student, GuidanceConfig(scale=0.1, solver="auto"), num_samples=4).predict(one))
    assert forecasts[0].samples.shape == (4, 24)
    assert student.nfe == 4  # one guided call per step, for the one batch


def test_methods_without_data_windows_are_refused(shipped, seasonal, tmp_path):
    with pytest.raises(ValueError, match="time features"):
        distill_tsdiff(shipped, seasonal.train, tmp_path / "r", method="reflow", iterations=1)
