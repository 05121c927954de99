"""Shipped teachers, the registry, evaluate and the demo (small n: quick behaviour checks)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fewstep.core.solvers import sample
from fewstep.image.cli import app
from fewstep.image.quality import evaluate_samples
from fewstep.image.registry import load_model, resolve, shipped_names, summary

runner = CliRunner()


def test_registry_lists_teachers_and_classifiers():
    names = shipped_names()
    assert {"digits-teacher", "shapes-teacher", "photos-teacher", "digits-classifier", "shapes-classifier",
            "photos-classifier", "photos-reward-classifier"} <= set(names)
    assert "teacher on digits" in summary("digits-teacher")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint path"):
        resolve("no-such-model")


@torch.no_grad()
def test_digits_teacher_samples_are_recognisable():
    torch.manual_seed(0)
    den = load_model("digits-teacher")
    y = torch.arange(300) % 10
    x = sample(den, torch.randn(300, 1, 16, 16), "dpmpp_2m", num_steps=20, cond=y).clamp(-1, 1)
    q = evaluate_samples("digits", x, y)
    assert q.accuracy >= 0.9, q
    assert q.dfd < 5.0, q


@torch.no_grad()
def test_shapes_teacher_samples_are_recognisable():
    torch.manual_seed(0)
    den = load_model("shapes-teacher")
    y = torch.arange(120) % 12
    x = sample(den, torch.randn(120, 3, 32, 32), "dpmpp_2m", num_steps=10, cond=y, denoise_to_zero=True).clamp(-1, 1)
    q = evaluate_samples("shapes", x, y)
    assert q.accuracy >= 0.8, q  # 0.91 at n = 480, 20 steps (docs/benchmarks/teachers.md)
    assert min(q.class_histogram) > 0, q  # every shape x colour class is produced


@torch.no_grad()
def test_photos_teacher_draws_each_photo_and_beats_its_one_step_self():
    """The photos teacher (crops of 14 real photographs) at 10 steps: the evaluation classifier
    recognises the requested photo, and its dFD is far better than a single step's."""
    den = load_model("photos-teacher")
    y = torch.arange(140) % 14
    noise = torch.randn(140, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q = {k: evaluate_samples("photos", sample(den, noise, "dpmpp_2m", num_steps=k, cond=y, denoise_to_zero=True).clamp(-1, 1), y)
         for k in (1, 10)}
    assert q[10].accuracy >= 0.75, q[10]  # 0.93 at n = 500, 50 steps (docs/benchmarks/teachers.md)
    assert q[10].dfd < 0.5 * q[1].dfd, (q[10].dfd, q[1].dfd)
    assert min(q[10].class_histogram) > 0, q[10]  # every photo is drawn


def test_guidance_sharpens_class_agreement():
    den = load_model("digits-teacher")
    y = torch.arange(200) % 10
    noise = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    acc = {}
    for w in (0.0, 3.0):  # w = 0 is the unconditional model
        x = sample(den, noise, "dpmpp_2m", num_steps=10, cond=y, guidance=w).clamp(-1, 1)
        acc[w] = evaluate_samples("digits", x, y).accuracy
    assert acc[3.0] > acc[0.0] + 0.5, acc


def test_evaluate_cli_json():
    r = runner.invoke(app, ["evaluate", "digits-teacher", "--num-steps", "4", "--n", "40", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert {"dfd", "accuracy", "recall", "nfe", "seconds_per_sample"} <= set(d)
    assert d["nfe"] == 4


def test_cli_errors_are_clear():
    r = runner.invoke(app, ["evaluate", "nope"])
    assert r.exit_code == 2 and "neither a checkpoint path" in r.output
    r = runner.invoke(app, ["evaluate", "digits-teacher", "--num-steps", "0"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "'--num-steps': must be an integer >= 1" in r.output


def test_models_cli_lists_every_shipped_model():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "digits-teacher" in r.output and "shapes-classifier" in r.output


def test_train_teacher_cli_writes_a_loadable_checkpoint(tmp_path):
    r = runner.invoke(app, ["train-teacher", "digits", "--out", str(tmp_path / "t"), "--iterations", "3"])
    assert r.exit_code == 0, r.output
    den = load_model(tmp_path / "t")
    assert den.card.provenance["iterations"] == 3 and den.sample_shape == (1, 16, 16)


def test_demo_writes_report(tmp_path):
    from fewstep.image.demo import run_demo

    report = run_demo(tmp_path, models=("digits-teacher",), nfe=(2, 4), n=40, log=lambda *_: None,
                      compression_steps=4, prune_iters=2)
    text = report.read_text()
    assert "## Compression" in text and "| W4A8 (packed int4, groups of 32) |" in text and "EcoDiff" in text
    assert "| digits-teacher | dpmpp_2m | 4 |" in text
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 1000
    assert (tmp_path / "digits-teacher-samples.png").stat().st_size > 500
