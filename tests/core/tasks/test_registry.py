"""The task registry: installed packages' entry points, clear errors for unknown names."""

import pytest
import torch

from fewstep.core.experiment import ExperimentConfig
from fewstep.core.tasks import TASKS, Task, get_task


def test_registry_lists_the_image_and_time_series_tasks():
    assert {"digits", "shapes", "seasonal"} <= set(TASKS)
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert task.describe().startswith(name)
    assert TASKS["digits"].modality == "image" and TASKS["seasonal"].modality == "timeseries"
    assert TASKS["digits"].sample_shape == (1, 16, 16) and TASKS["shapes"].sample_shape == (3, 32, 32)


def test_unknown_task_and_method_and_bad_numbers_are_clear():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known tasks: .*digits"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known: .*dmd2"):
        ExperimentConfig("digits", "nope")
    with pytest.raises(ValueError, match="unknown task"):
        ExperimentConfig("nope", "pd")
    with pytest.raises(ValueError, match="at least 1 sampling step"):
        ExperimentConfig("digits", "pd", student_steps=0)
    with pytest.raises(ValueError, match="at least 2"):
        ExperimentConfig("digits", "pd", n=1)
    with pytest.raises(ValueError, match="needs at least 20"):  # dFD's floor for image tasks
        ExperimentConfig("digits", "pd", n=5)
    with pytest.raises(ValueError, match="at least 1 iteration"):
        ExperimentConfig("digits", "pd", iterations=0)


def test_image_intervals_reuse_the_package_dfd():
    # The task's point estimates are fewstep.image.quality's own figures; only intervals are added.
    from fewstep.image.quality import evaluate_samples

    task = TASKS["digits"]
    x, y = task.data("eval")
    m = task.evaluate(task.reference(60, seed=1))
    s = task.reference(60, seed=1)
    q = evaluate_samples("digits", *s.data)
    assert m["dfd"].value == pytest.approx(q.dfd, rel=1e-6)
    assert m["accuracy"].value == pytest.approx(q.accuracy)
    assert m["precision"].value == pytest.approx(q.precision) and m["recall"].value == pytest.approx(q.recall)
    assert all(v.low <= v.value <= v.high and v.n == (len(x) if k in ("recall", "coverage") else 60) for k, v in m.items())
    assert {"kid", "density", "coverage", "class_fd"} <= set(m)
    assert len(x) == len(y) == 270


def test_image_reference_rows_are_class_balanced_and_collapse_is_flagged(tmp_path):
    from fewstep.core.experiment import _collapsed

    task = TASKS["digits"]
    real, flat = task.reference(60, seed=0), task.collapse(60)
    assert torch.equal(torch.bincount(real.data[1]), torch.full((10,), 6))
    assert torch.equal(torch.bincount(flat.data[1]), torch.full((10,), 6))
    assert len(torch.unique(flat.data[0].flatten(1), dim=0)) == 10  # one image per class
    m_real, m_flat = task.evaluate(real), task.evaluate(flat)
    assert m_flat["recall"].value < 0.2 < m_real["recall"].value
    assert m_flat["dfd"].value > m_real["dfd"].value and m_flat["coverage"].value < m_real["coverage"].value
    assert _collapsed({"teacher_best": m_real, "collapse": m_flat, "real": m_real}) == {"collapse"}
    # FD between sample sets, and the paired error of identical pairs
    assert task.distance(real, real).value == pytest.approx(0.0, abs=1e-6)
    assert task.paired(real, real).value == 0.0 and task.paired(flat, real).value > 0


def test_series_intervals_reuse_gluonts_aggregates():
    # CRPS, ND and NRMSE are gluonts' Evaluator aggregates; the task only adds intervals over windows.
    import warnings

    from gluonts.evaluation import Evaluator

    from fewstep.core.tasks import Rule
    from fewstep.timeseries.evaluate import QUANTILES

    task = TASKS["seasonal"]
    s = task.generate(task.teacher(), Rule("ddim", 2), 3)
    assert s.n == 3 and s.nfe == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg, _ = Evaluator(quantiles=QUANTILES, num_workers=0)(s.data["series"], s.data["forecasts"])
    m = task.evaluate(s)
    assert m["CRPS"].value == pytest.approx(agg["mean_wQuantileLoss"], rel=1e-9)
    assert m["ND"].value == pytest.approx(agg["ND"], rel=1e-9) and m["NRMSE"].value == pytest.approx(agg["NRMSE"], rel=1e-9)
    assert all(v.low <= v.value <= v.high and v.n == 3 for v in m.values())
