"""fewstep-image distill: trains, resumes, saves a loadable student and a report; shipped students
beat their teacher at equal NFE."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fewstep.image.cli import app
from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
from fewstep.image.registry import load_model, shipped_names


def test_distill_command_trains_resumes_and_reports(tmp_path):
    out = tmp_path / "cd1"
    base = ["distill", "cd", "--teacher", "digits", "--student-steps", "1", "--out", str(out), "--batch-size", "8",
            "--eval-n", "20", "-o", "target_ema=0.9"]
    r = CliRunner().invoke(app, [*base, "--iterations", "2"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["student"]["nfe"] == 1 and report["train_iterations"] == 2
    assert report["objective"]["target_ema"] == 0.9
    student = load_model(out)
    assert student.card.student_steps == 1 and student.card.sampler.solver == "consistency"
    # The same command again resumes from the checkpoint in OUT.work (here: finished, nothing to do).
    r = CliRunner().invoke(app, [*base, "--iterations", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".report.json").read_text())["resumed_from"] == 2
    # Another budget changes the objectives' schedules: refused with the key, until --restart.
    r = CliRunner().invoke(app, [*base, "--iterations", "3"])
    assert r.exit_code == 2 and "total_iterations: 2 -> 3" in r.output and "--restart" in r.output
    r = CliRunner().invoke(app, [*base, "--iterations", "3", "--restart"])
    assert r.exit_code == 0, r.output
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["resumed_from"] == 0 and report["train_iterations"] == 3


def test_distill_command_rejects_unknown_methods_and_options(tmp_path):
    r = CliRunner().invoke(app, ["distill", "nope", "--out", str(tmp_path / "s")])
    assert r.exit_code != 0 and "unknown distillation method" in r.output
    r = CliRunner().invoke(app, ["distill", "cd", "--out", str(tmp_path / "s"), "-o", "bogus=1"])
    assert r.exit_code != 0 and "unknown options" in r.output


@pytest.mark.parametrize("name", ["digits-traj-1step", "digits-traj-4step", "digits-dist-1step"])
def test_shipped_trajectory_students_beat_the_teacher_at_their_nfe(name):
    if name not in shipped_names():
        pytest.skip(f"{name} is not shipped in this checkout")
    torch.set_num_threads(1)
    student = load_model(name)
    s = evaluate_denoiser(student, EvalConfig(n=200))
    t = evaluate_denoiser(load_model("digits-teacher"), EvalConfig(solver="ddim", num_steps=student.card.student_steps, grid="uniform", n=200))
    assert s["nfe"] == student.card.student_steps
    assert s["dfd"] < t["dfd"], (s["dfd"], t["dfd"])
    assert s["accuracy"] > 0.9


def test_distill_command_passes_the_classifier_reward(tmp_path):
    out = tmp_path / "flash"
    r = CliRunner().invoke(app, ["distill", "flash-dmd", "--teacher", "digits", "--student-steps", "1", "--out", str(out), "--iterations", "2",
                                 "--batch-size", "8", "--eval-n", "20", "-o", "reward_weight=0.02", "--reward", "classifier"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".report.json").read_text())["objective"]["reward_weight"] == 0.02
    r = CliRunner().invoke(app, ["distill", "flash-dmd", "--teacher", "digits", "--student-steps", "1", "--out", str(tmp_path / "f2"),
                                 "--iterations", "2", "--batch-size", "8", "--eval-n", "20", "-o", "reward_weight=0.02"])
    assert r.exit_code != 0 and "reward" in r.output
