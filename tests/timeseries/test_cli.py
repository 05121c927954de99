"""fewstep-ts end to end on a user's CSV: train, forecast (CSV + plot), evaluate --json, refine --json, demo;
checkpoint names, settings-checked resume, --restart and one writer per --out."""

import json

import numpy as np
import pandas as pd
import pytest
from fewstep.timeseries.cli import app
from typer.testing import CliRunner


def _invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout  # progress bars go to stderr, so --json output is one clean line


@pytest.fixture(scope="module")
def user_csv(tmp_path_factory):
    """Two hourly series (a daily cycle with noise, different levels), 20 days: a user's own data."""
    rng = np.random.default_rng(0)
    t = np.arange(24 * 20)
    df = pd.DataFrame({
        "time": pd.date_range("2024-01-01", periods=len(t), freq="h"),
        "load": 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.3 * rng.standard_normal(len(t)),
        "temp": 20 + 5 * np.sin(2 * np.pi * (t - 6) / 24) + 0.3 * rng.standard_normal(len(t)),
    })
    path = tmp_path_factory.mktemp("csv") / "user.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(user_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    _invoke("train", "--out", out, "--csv", user_csv, "--freq", "h", "--prediction-length", 24, "--windows", 2,
            "--iterations", 300, "--hidden", 32, "--layers", 2)
    return out


def test_train_writes_a_checkpoint_with_its_card(trained):
    card = json.loads(trained.with_suffix(".json").read_text())
    facts = card["card"]["provenance"]
    assert facts["tsdiff"]["prediction_length"] == 24 and facts["tsdiff"]["freq"] == "h"


def test_forecast_writes_quantiles_and_a_plot(trained, user_csv, tmp_path):
    out = _invoke("forecast", trained, "--csv", user_csv, "--solver", "dpmpp_2m", "--num-steps", 10, "--num-samples", 16,
                  "--plot", tmp_path / "f.png", "--out", tmp_path / "f.csv")
    assert "load" in out or "temp" in out
    q = pd.read_csv(tmp_path / "f.csv")
    assert len(q) == 2 * 24  # both series, the whole horizon
    assert list(q.columns) == ["item_id", "timestamp", "q10", "q50", "q90"]
    assert (q.q90 >= q.q50).all() and (q.q50 >= q.q10).all()
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_evaluate_json_scores_tsdiff_and_the_baseline(trained, user_csv):
    out = _invoke("evaluate", trained, "--csv", user_csv, "--freq", "h", "--windows", 2, "--solver", "dpmpp_2m",
                  "--num-steps", 10, "--num-samples", 16, "--deepar-epochs", 0, "--json")
    r = json.loads(out)
    assert r["test_windows"] == 4 and r["prediction_length"] == 24
    for name in ("tsdiff", "seasonal_naive"):
        assert {"CRPS", "ND", "NRMSE"} <= set(r[name]) and np.isfinite(r[name]["CRPS"])
    # A daily cycle with noise: the trained model must forecast it far better than a flat line at
    # the series' level would (CRPS relative to the level: mean |sine| / level ~ 0.17 here).
    assert r["tsdiff"]["CRPS"] < 0.05, r


def test_refine_json_improves_seasonal_naive(trained, user_csv):
    out = _invoke("refine", trained, "--csv", user_csv, "--freq", "h", "--windows", 2, "--iterations", 20, "--json")
    r = json.loads(out)
    assert r["base"] == "seasonal_naive" and r["after"]["CRPS"] < r["before"]["CRPS"], r


def test_demo_writes_its_report_and_plot(tmp_path):
    out = _invoke("demo", "--out", tmp_path / "demo", "--iterations", 30, "--num-samples", 4)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "CRPS" in report and "TSDiff guided" in report and out.startswith("# fewstep-ts demo")
    assert (tmp_path / "demo" / "forecast.png").stat().st_size > 1000


def test_distill_then_forecast_with_the_students_own_rule(trained, user_csv, tmp_path):
    _invoke("distill", trained, "--out", tmp_path / "s", "--csv", user_csv, "--freq", "h", "--windows", 2,
            "--student-steps", 2, "--iterations", 8)
    card = json.loads((tmp_path / "s.json").read_text())
    assert card["card"]["student_steps"] == 2 and card["card"]["provenance"]["tsdiff"]["prediction_length"] == 24
    _invoke("forecast", tmp_path / "s", "--csv", user_csv, "--solver", "auto", "--num-samples", 4, "--out", tmp_path / "f.csv")
    assert len(pd.read_csv(tmp_path / "f.csv")) == 2 * 24


# -- checkpoints (issue 28): names, resume with the same settings only, --restart, one writer -------
def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _tiny_train(user_csv, out, *extra):
    return _run("train", "--out", out, "--csv", user_csv, "--freq", "h", "--prediction-length", 12, "--hidden", 8,
                "--layers", 1, *extra)


def test_out_with_a_suffix_names_the_checkpoint_stem(user_csv, tmp_path):
    res = _tiny_train(user_csv, tmp_path / "t5.json", "--iterations", 3)
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 't5.safetensors'} and {tmp_path / 't5.json'}" in res.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {"t5.safetensors", "t5.json", "t5.run"} <= names and not any("json." in n for n in names), names
    assert not [n for n in names if n.endswith((".tmp", ".lock"))], names  # no temp files, the lock is released


def test_final_loss_is_the_mean_of_the_losses_it_ran(user_csv, tmp_path):
    from fewstep.core.io import load_weights

    res = _tiny_train(user_csv, tmp_path / "m", "--iterations", 4)
    assert res.exit_code == 0, res.output
    losses = load_weights(tmp_path / "m.run" / "checkpoint")[1]["losses"]
    assert len(losses) == 4
    assert f"final loss {sum(losses) / 4:.4f}" in res.stdout  # not sum / 50


def test_resume_needs_the_same_settings_and_restart_starts_over(user_csv, tmp_path):
    out = tmp_path / "m"
    assert _tiny_train(user_csv, out, "--iterations", 4, "--save-every", "2it").exit_code == 0
    res = _tiny_train(user_csv, out, "--iterations", 4, "--seed", 5)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "train.seed: 0 -> 5" in res.output and "--restart" in res.output
    res = _tiny_train(user_csv, out, "--iterations", 6)  # more iterations, same settings: resumes
    assert res.exit_code == 0 and "trained 2 iterations (resumed at iteration 4)" in res.stdout, res.output
    res = _tiny_train(user_csv, out, "--iterations", 3, "--seed", 5, "--restart")
    assert res.exit_code == 0 and "trained 3 iterations in" in res.stdout, res.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["card"]["provenance"]["tsdiff"]["hidden"] == 8


HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
    "os.write(fd, str(os.getpid()).encode()); print('held', flush=True); time.sleep(60)"
)


def test_a_second_writer_to_the_same_out_fails_at_once(user_csv, tmp_path):
    import subprocess
    import sys

    from fewstep.core.locks import lock_path

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path(tmp_path / "m"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _tiny_train(user_csv, tmp_path / "m.safetensors", "--iterations", 2)
        assert res.exit_code == 2, res.output
        assert f"another fewstep process (pid {holder.pid}) is writing" in res.output
        assert not (tmp_path / "m.run").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()


def test_distill_resumes_only_the_same_run(trained, user_csv, tmp_path):
    args = ["distill", trained, "--out", tmp_path / "s.safetensors", "--csv", user_csv, "--freq", "h",
            "--student-steps", 2, "--iterations", 3]
    res = _run(*args)
    assert res.exit_code == 0 and f"wrote {tmp_path / 's.safetensors'} and {tmp_path / 's.json'}" in res.stdout, res.output
    res = _run(*args, "--seed", 5)
    assert res.exit_code == 2 and "train.seed: 0 -> 5" in res.output and "--restart" in res.output
    res = _run(*args, "--seed", 5, "--restart", "--save-every", "30s")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["card"]["student_steps"] == 2


def test_forecast_csv_is_written_whole(trained, user_csv, tmp_path):
    res = _run("forecast", trained, "--csv", user_csv, "--solver", "ddim", "--num-steps", 2, "--num-samples", 2,
               "--out", tmp_path / "f.csv")
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "f.csv")) == 2 * 24 and [p.name for p in tmp_path.iterdir()] == ["f.csv"]
    res = _run("forecast", trained, "--csv", user_csv, "--out", tmp_path / "f.csv" / "g.csv")  # a file in the way
    assert res.exit_code == 2 and "a file stands where a folder is needed" in res.output
