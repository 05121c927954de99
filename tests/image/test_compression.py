"""Compression of the shipped teachers: calibration across time steps, the CLI, evaluate on outputs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fewstep.core.cli import app as core_app
from fewstep.core.quant import QuantConfig, quantize
from fewstep.core.solvers import sample
from fewstep.image.cli import app as image_app
from fewstep.image.quality import evaluate_samples
from fewstep.image.registry import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("digits-teacher")
    torch.set_num_threads(n)


@torch.no_grad()
def test_calibrating_across_time_steps_beats_a_single_step(digits):
    """PTQ4DM / Q-Diffusion: W8A8 calibrated on the whole trajectory keeps the teacher's quality;
    calibrated only on the last step (small t) its activation ranges are wrong elsewhere."""
    n, steps = 200, 10
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 10

    def dfd(model):
        s = sample(model, x, "ddim", steps, cond=y, denoise_to_zero=True)
        return evaluate_samples("digits", s, y).dfd

    fp = dfd(digits)
    spread = dfd(quantize(digits, QuantConfig(scheme="w8a8", calib_samples=16, calib_steps=steps)))
    single = dfd(quantize(digits, QuantConfig(scheme="w8a8", calibration="single", single_step=1.0,
                                              calib_samples=64, calib_steps=steps)))
    assert spread < single - 0.1, (fp, spread, single)
    assert spread < fp * 1.05, (fp, spread)  # W8A8 within 5% of full precision


def test_quantize_cli_writes_a_model_evaluate_can_load(tmp_path):
    out = tmp_path / "digits-w4a8"
    r = runner.invoke(core_app, ["quantize", "digits-teacher", "--scheme", "w4a8", "--calib-samples", "4",
                                 "--calib-steps", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "MB ->" in r.output
    r = runner.invoke(image_app, ["evaluate", str(out), "--n", "40", "--num-steps", "6", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["accuracy"] > 0.8


def test_quantize_cli_reports_bad_input():
    r = runner.invoke(core_app, ["quantize", "no-such-model", "--out", "x"])
    assert r.exit_code == 2 and "neither a checkpoint path" in r.output
    r = runner.invoke(core_app, ["quantize", "digits-teacher", "--scheme", "w2", "--out", "x"])
    assert r.exit_code == 2 and "unknown scheme" in r.output


def test_prune_cli_writes_a_smaller_model(tmp_path):
    out = tmp_path / "digits-pruned"
    r = runner.invoke(core_app, ["prune", "digits-teacher", "--ratio", "0.2", "--iterations", "2", "--num-steps", "4",
                                 "--batch", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "parameters" in r.output
    model = load_model(out)
    assert sum(p.numel() for p in model.net.parameters()) < 0.9 * 811_489
