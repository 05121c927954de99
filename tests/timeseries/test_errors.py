"""Bad input raises errors that say what to do: short series, NaNs, wrong frequencies, bad CSVs, CLI options
(checked before any work), NaN during sampling, sizes that cannot fit."""

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from fewstep.core import checks
from fewstep.timeseries import TSDiffConfig, from_csv
from fewstep.timeseries.cli import app
from fewstep.timeseries.data import split
from fewstep.timeseries.features import check_training_data, training_windows
from typer.testing import CliRunner


def _series(n, nan_at=None):
    v = np.sin(np.arange(n) / 3.0) + 5
    if nan_at is not None:
        v[nan_at] = np.nan
    return [("a", pd.Period("2020-01-01", freq="D"), v)]


def test_wrong_frequency_string():
    with pytest.raises(ValueError, match="not a pandas frequency string.*'D' \\(daily\\)"):
        TSDiffConfig(freq="daily", prediction_length=7, context_length=14)
    with pytest.raises(ValueError, match="frequency 'fortnight'"):
        split(_series(50), "fortnight", 7, 1, "x")


def test_nan_in_series_says_how_to_fill():
    with pytest.raises(ValueError, match=r"1 missing or infinite values \(first at positions \[10\]\).*interpolate"):
        split(_series(50, nan_at=10), "D", 7, 1, "x")


def test_series_too_short_to_hold_out():
    with pytest.raises(ValueError, match="too short to hold out 3 window.*lower --prediction-length"):
        split(_series(20), "D", 7, 3, "x")


def test_series_too_short_for_the_window():
    data = split(_series(60), "D", 7, 1, "x")
    cfg = TSDiffConfig(freq="D", prediction_length=7, context_length=40, lags=(14,))
    with pytest.raises(ValueError, match=r"longest has 53 values but .* = 61 are needed; lower --context-length"):
        check_training_data(cfg, data.train)
    with pytest.raises(ValueError, match="shorter than one window"):
        training_windows(cfg, data.train, 8)


def test_bad_config_values():
    with pytest.raises(ValueError, match="lags"):
        TSDiffConfig(freq="D", prediction_length=7, context_length=14, lags=(0,))
    with pytest.raises(ValueError, match="scaling"):
        TSDiffConfig(freq="D", prediction_length=7, context_length=14, scaling="minmax")


def test_csv_errors(tmp_path):
    ok = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=40, freq="D"), "y": np.arange(40.0)})
    path = tmp_path / "ok.csv"
    ok.to_csv(path, index=False)
    data = from_csv(path, "D", 5, windows=2)
    assert len(data.train) == 1 and len(data.test) == 2 and len(data.train[0]["target"]) == 30
    with pytest.raises(ValueError, match="not regular at frequency 'h'.*pass the data's real --freq"):
        from_csv(path, "h", 5)
    bad = ok.copy()
    bad.loc[3, "y"] = np.nan
    bad.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(ValueError, match="missing or infinite"):
        from_csv(tmp_path / "nan.csv", "D", 5)
    with pytest.raises(FileNotFoundError, match="no such CSV"):
        from_csv(tmp_path / "missing.csv", "D", 5)


def test_cli_prints_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), "--csv", str(tmp_path / "x.csv")])
    assert res.exit_code == 2
    assert "--csv needs --freq" in res.output


# -- every numeric option is checked while the command line is parsed (issue 28) --------------------


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_every_numeric_option_has_a_checks_parser():
    group = typer.main.get_command(app)
    unchecked = []
    for name, command in group.commands.items():
        for p in command.params:
            td = p.type_descriptor  # typer's record of the annotation and the option's parser
            parser = td.parameter_info.parser
            if td.annotation in (int, float) and not isinstance(parser, checks.Number):
                unchecked.append(f"{name} {p.opts[0]}")
            if p.opts[0] in ("--lags", "--save-every") and parser is None:
                unchecked.append(f"{name} {p.opts[0]}")
    assert not unchecked, unchecked


def _required(command, out):
    """The arguments a command needs besides the probed option (none of them is read before it fails)."""
    model = ["seasonal-tsdiff"] if command in ("distill", "forecast", "refine", "evaluate") else []
    dest = ["--out", out] if command in ("train", "distill", "demo") else []
    return [command, *model, *dest, "--dataset", "seasonal"] if command != "demo" else [command, *dest]


BAD = [
    ("train", "--windows", "0"), ("train", "--prediction-length", "0"), ("train", "--prediction-length", "nan"),
    ("train", "--context-length", "-1"), ("train", "--hidden", "1e308"), ("train", "--layers", "0"),
    ("train", "--iterations", str(10**15)), ("train", "--iterations", "0"), ("train", "--seed", "-1"),
    ("train", "--save-every", "soon"), ("train", "--save-every", "0it"),
    ("distill", "--student-steps", "0"), ("distill", "--iterations", "inf"), ("distill", "--windows", "0"),
    ("forecast", "--num-samples", "0"), ("forecast", "--num-samples", str(10**15)), ("forecast", "--scale", "nan"),
    ("forecast", "--scale", "inf"), ("forecast", "--scale", "-3"), ("forecast", "--num-steps", "0"),
    ("refine", "--step-size", "0"), ("refine", "--step-size", "nan"), ("refine", "--iterations", "0"),
    ("evaluate", "--deepar-epochs", "-1"), ("evaluate", "--num-samples", "-1"), ("evaluate", "--windows", "0"),
    ("demo", "--num-samples", "0"), ("demo", "--iterations", "1e308"),
]


@pytest.mark.parametrize("command,option,value", BAD)
def test_bad_numbers_stop_before_any_work(tmp_path, command, option, value):
    res = _cli(*_required(command, tmp_path / "out"), option, value)
    assert res.exit_code == 2, res.output
    assert option in res.output and "Traceback" not in res.output
    assert not list(tmp_path.iterdir())  # nothing was written, not even a lock file


def test_lags_that_are_not_integers_name_the_option(tmp_path):
    res = _cli("train", "--out", tmp_path / "m", "--dataset", "seasonal", "--lags", "a,b")
    assert res.exit_code == 2 and "--lags" in res.output and "'a' is not an integer" in res.output
    res = _cli("train", "--out", tmp_path / "m", "--dataset", "seasonal", "--lags", "0")
    assert res.exit_code == 2 and "--lags" in res.output


def test_windows_zero_is_refused_by_the_library_too():
    from fewstep.timeseries import load

    with pytest.raises(ValueError, match="windows=0"):
        load("seasonal", 24, 0)


def test_guidance_scale_must_be_finite():
    from fewstep.timeseries import GuidanceConfig

    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite number >= 0"):
            GuidanceConfig(scale=bad)


# -- CSV input: say which file and what is expected ----------------------------------------------------
def _dated(n=60, **cols):
    return pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="D"), **cols})


def test_empty_header_only_and_binary_csv_name_the_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty; expected a CSV text file with a header row"):
        from_csv(tmp_path / "empty.csv", "D", 5)
    (tmp_path / "blank.csv").write_text("\n\n  \n")
    with pytest.raises(ValueError, match=r"blank\.csv: the file is empty"):
        from_csv(tmp_path / "blank.csv", "D", 5)
    (tmp_path / "head.csv").write_text("date,y\n")
    with pytest.raises(ValueError, match=r"head\.csv: has a header \(date, y\) but no data rows"):
        from_csv(tmp_path / "head.csv", "D", 5)
    (tmp_path / "model.csv").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"model\.csv: this is a binary file .*expected a CSV"):
        from_csv(tmp_path / "model.csv", "D", 5)
    (tmp_path / "latin.csv").write_bytes(b"date,y\n2020-01-01,\xff\xfe\n")
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8 text"):
        from_csv(tmp_path / "latin.csv", "D", 5)
    res = _cli("forecast", "seasonal-tsdiff", "--csv", tmp_path / "model.csv", "--freq", "h")
    assert res.exit_code == 2 and "model.csv: this is a binary file" in res.output and "Traceback" not in res.output


def test_integer_timestamps_are_not_read_as_nanoseconds(tmp_path):
    v = 5 + np.sin(np.arange(60) / 3.0)
    pd.DataFrame({"t": np.arange(60), "y": v}).to_csv(tmp_path / "int.csv", index=False)
    with pytest.raises(ValueError, match=r"int\.csv: the timestamp column 't' holds numbers \(0, 1, 2, \.\.\.\), not dates.*"
                                         r"--timestamp-column"):
        from_csv(tmp_path / "int.csv", "D", 5)
    # An id column before the dates: the message points at the date column.
    pd.DataFrame({"id": np.arange(60) + 7, "date": pd.date_range("2020", periods=60, freq="D").astype(str), "y": v}).to_csv(
        tmp_path / "id.csv", index=False)
    with pytest.raises(ValueError, match="pass --timestamp-column 'date'"):
        from_csv(tmp_path / "id.csv", "D", 5)
    # Whole numbers with a yearly frequency are years, as a year,value CSV means.
    pd.DataFrame({"year": np.arange(1700, 1760), "y": v}).to_csv(tmp_path / "years.csv", index=False)
    data = from_csv(tmp_path / "years.csv", "Y", 5)
    assert str(data.train[0]["start"]) == "1700" and len(data.train[0]["target"]) == 55
    # pandas' own row index (df.to_csv without index=False) is not a series.
    _dated(y=v).to_csv(tmp_path / "indexed.csv")
    data = from_csv(tmp_path / "indexed.csv", "D", 5)
    assert [e["item_id"] for e in data.train] == ["y"]


def test_huge_and_non_numeric_values_name_the_column_and_row(tmp_path):
    for big in (1e308, -1e308):
        df = _dated(y=np.arange(60.0), z=np.ones(60))
        df.loc[7, "z"] = big
        df.to_csv(tmp_path / "big.csv", index=False)
        with pytest.raises(ValueError, match=r"big\.csv: series 'z' has 1 value\(s\) too large to model \(first at data row 8") as e:
            from_csv(tmp_path / "big.csv", "D", 5)
        assert "missing" not in str(e.value)
    df = _dated(y=[str(i) for i in range(60)])
    df.loc[4, "y"] = "n/a?"
    df.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match=r"text\.csv: value column 'y' is not numeric \(data row 5: 'n/a\?'\)"):
        from_csv(tmp_path / "text.csv", "D", 5)
    df = _dated(y=np.arange(60.0))
    df.loc[9, "date"] = None
    df.to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ValueError, match=r"gap\.csv: the timestamp column 'date' is empty at data row 10"):
        from_csv(tmp_path / "gap.csv", "D", 5)


# -- NaN during sampling or refinement stops with the step -------------------------------------------
class _NaNLate(torch.nn.Module):
    """A net that turns NaN once the time it is called at drops below ``frac`` of the first one
    (whatever scale the schedule hands the net)."""

    def __init__(self, net, frac):
        super().__init__()
        self.inner, self.frac, self.first = net, frac, None

    def forward(self, x, t, cond=None):
        out = self.inner(x, t, cond)
        now = float(torch.as_tensor(t).reshape(-1)[0])
        self.first = now if self.first is None else self.first
        return out * float("nan") if now < self.frac * self.first else out


def _tiny_model():
    from fewstep.timeseries import build_tsdiff

    cfg = TSDiffConfig(freq="h", prediction_length=4, context_length=8, hidden=8, layers=1, state=4)
    return build_tsdiff(cfg).eval(), cfg


def test_nan_during_guided_sampling_names_the_step():
    from fewstep.timeseries import GuidanceConfig, guided_sample

    den, cfg = _tiny_model()
    den.net = _NaNLate(den.net, frac=0.45)
    obs = torch.ones(2, cfg.channels, cfg.length)
    mask = torch.zeros_like(obs)
    mask[..., : cfg.context_length] = 1
    with pytest.raises(FloatingPointError, match=r"guided sampling produced NaN/inf at step ([5-9]) of 10 \(denoiser call \1\), diffusion time t=0\.[1-4]"):
        guided_sample(den, obs, mask, 3, GuidanceConfig(scale=1.0, solver="ddim", num_steps=10))
    with pytest.raises(ValueError, match="observed window holds NaN"):
        guided_sample(den, obs * float("inf"), mask, 3, GuidanceConfig(solver="ddim", num_steps=2))


def test_nan_during_refinement_names_the_iteration():
    from fewstep.timeseries import RefineConfig
    from fewstep.timeseries.refine import refine_window

    den, cfg = _tiny_model()
    den.net = _NaNLate(den.net, frac=2.0)
    with pytest.raises(FloatingPointError, match=r"became NaN/inf at iteration 1 of 5 .*lower --step-size"):
        refine_window(den, torch.zeros(2, 0), torch.ones(2, cfg.context_length), torch.ones(2, cfg.prediction_length),
                      RefineConfig(iterations=5))


def test_a_num_samples_that_cannot_fit_is_refused_before_sampling(monkeypatch, tmp_path):
    monkeypatch.setattr(checks, "available_memory", lambda: 2**30)  # 1 GiB free
    res = _cli("forecast", "seasonal-tsdiff", "--dataset", "seasonal", "--num-samples", 50_000)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "guided sampling of 8 series x 50,000 samples needs" in res.output and "lower --num-samples" in res.output
    res = _cli("demo", "--out", tmp_path / "demo", "--num-samples", 50_000)
    assert res.exit_code == 2 and "lower --num-samples" in res.output and not list(tmp_path.iterdir())


def test_a_model_too_big_for_memory_is_refused_before_building(monkeypatch, tmp_path):
    from fewstep.timeseries import TrainSettings, train_tsdiff

    monkeypatch.setattr(checks, "available_memory", lambda: 2**30)
    cfg = TSDiffConfig(freq="h", prediction_length=4, context_length=8, hidden=4096, layers=64)
    with pytest.raises(ValueError, match="a TSDiff of hidden 4096 x 64 layers needs .* lower --hidden or --layers"):
        train_tsdiff(cfg, [], TrainSettings(iterations=1), tmp_path)
