"""``fewstep-ts``: train, forecast, refine, evaluate and demo TSDiff (thin: parse and call).

Every numeric option is checked while the command line is parsed (``fewstep.core.checks``), so a
bad value stops the command before any work with a message naming the option. Commands that write
a checkpoint hold its write lock (``output_lock``) from the start, and name it by its stem
(``--out m``, ``--out m.json`` and ``--out m.safetensors`` all write ``m.safetensors`` + ``m.json``).
"""

from __future__ import annotations

import json
import contextlib
from pathlib import Path
from typing import Optional

import typer
from fewstep.core import checks
from fewstep.core.cli_support import friendly, output_lock, restart_option, save_every_option, written
from fewstep.core.io import checkpoint_stem

app = typer.Typer(add_completion=False, no_args_is_help=True, help="fewstep for time series (TSDiff on gluonts).")

MAX_LENGTH = 10_000  # prediction / context length: beyond it a window is a typo (and an S4 kernel of that length)
MAX_SAMPLES = 100_000

DATASET = typer.Option(None, help="built-in data: complex_seasonal, seasonal, sunspots, co2, elnino, nile")
CSV = typer.Option(None, help="CSV file: a timestamp column (dates; years with --freq Y) and one or more value columns")
FREQ = typer.Option(None, help="pandas frequency of the CSV rows, e.g. h, D, W, M, Y (required with --csv)")
HORIZON = typer.Option(None, "--prediction-length", parser=checks.count(1, MAX_LENGTH),
                       help="forecast horizon (default: the model's, or the dataset's)")
WINDOWS = typer.Option(None, "--windows", parser=checks.count(1, 1000),
                       help="held-out test windows of prediction-length at the end of each series")
TS_COL = typer.Option(None, help="name of the CSV's timestamp column (default: the first column)")
NUM_STEPS = typer.Option(None, "--num-steps", parser=checks.count(1, 10_000),
                         help="sampling steps (default 100, or a student's own)")
SCALE = typer.Option(None, "--scale", parser=checks.real(0, 100),
                     help="self-guidance scale (default 4 at 50+ steps, 2 at 20-49, 1 below)")
NUM_SAMPLES = typer.Option(100, "--num-samples", parser=checks.count(1, MAX_SAMPLES), help="sample paths per forecast")
SEED = typer.Option(0, "--seed", parser=checks.seed(), help="random seed")


def _data(dataset, csv, freq, prediction_length, windows, timestamp_column):
    from .data import from_csv, load

    if (dataset is None) == (csv is None):
        raise ValueError("pass exactly one of --dataset NAME or --csv FILE")
    if csv is not None:
        if freq is None or prediction_length is None:
            raise ValueError("--csv needs --freq (e.g. D) and --prediction-length")
        return from_csv(csv, freq, prediction_length, 1 if windows is None else windows, timestamp_column)
    return load(dataset, prediction_length, windows)


def _model(model: str, prediction_length: Optional[int]):
    from .model import load_tsdiff, tsdiff_config

    den = load_tsdiff(model)
    cfg = tsdiff_config(den)
    if prediction_length is not None and prediction_length != cfg.prediction_length:
        raise ValueError(f"{model} forecasts {cfg.prediction_length} steps, not {prediction_length}; retrain with "
                         f"--prediction-length {prediction_length}")
    return den, cfg


def _guidance(solver: str, steps: Optional[int], scale: Optional[float], energy: str, den=None):
    from .guidance import GuidanceConfig, default_scale

    grid = "uniform" if solver in ("ddpm", "ddim") else "logsnr"
    own = den.card.student_steps if solver == "auto" and den is not None else None  # a student samples with its own step count
    scale = default_scale(steps or own) if scale is None else scale
    return GuidanceConfig(energy=energy, scale=scale, solver=solver, num_steps=steps, grid=grid)


def _check_sizes(den, data, num_samples: int, batch_size: int = 16) -> None:
    """Refuse, before sampling, a --num-samples whose guided sampling or kept forecasts cannot fit."""
    from .guidance import check_sampling_size

    entries = len(data.test)
    check_sampling_size(den, min(batch_size, entries), num_samples)
    checks.check_fits(2 * 4 * entries * num_samples * data.prediction_length,
                      f"keeping {entries} forecasts of {num_samples:,} samples", "lower --num-samples")


def _final_loss(losses: list[float]) -> str:
    """The mean of the last min(50, n) losses."""
    if not losses:
        return "n/a"
    tail = losses[-50:]
    return f"{sum(tail) / len(tail):.4f}"


@app.command()
@friendly
def train(
    out: Path = typer.Option(..., help="checkpoint stem to write (OUT.safetensors + OUT.json; resumes from OUT.run)"),
    dataset: Optional[str] = DATASET, csv: Optional[Path] = CSV, freq: Optional[str] = FREQ,
    prediction_length: Optional[int] = HORIZON, windows: Optional[int] = WINDOWS,
    timestamp_column: Optional[str] = TS_COL,
    context_length: Optional[int] = typer.Option(None, parser=checks.count(1, MAX_LENGTH),
                                                 help="context window (default: 3 x prediction length)"),
    lags: Optional[str] = typer.Option(None, parser=checks.int_list(1, 100_000),
                                       help="comma-separated lags, e.g. 24,168 (default: the frequency's season)"),
    scaling: str = typer.Option("mean", help="mean (TSDiff) or std"),
    steps: int = typer.Option(3000, "--iterations", parser=checks.count(1), help="training iterations"),
    hidden: int = typer.Option(64, parser=checks.count(1, 4096), help="hidden width of the S4 backbone"),
    layers: int = typer.Option(3, parser=checks.count(1, 64), help="residual S4 blocks"),
    seed: int = SEED,
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
) -> None:
    """Train TSDiff on the training part of the data (the test windows are held out)."""
    from .config import TSDiffConfig
    from .model import TrainSettings, save_tsdiff, train_tsdiff
    from .recipes import default_lags

    out = checkpoint_stem(out)
    with output_lock(out):
        data = _data(dataset, csv, freq, prediction_length, windows, timestamp_column)
        p = data.prediction_length
        lag_list = tuple(int(v) for v in lags.split(",")) if lags else default_lags(data.freq, p)
        cfg = TSDiffConfig(freq=data.freq, prediction_length=p, context_length=context_length or 3 * p, lags=lag_list,
                           scaling=scaling, hidden=hidden, layers=layers)
        settings = TrainSettings(iterations=steps, seed=seed, **checks.parse_save_every(save_every).fields())
        den, result = train_tsdiff(cfg, data.train, settings, out.with_name(out.name + ".run"), resume=not restart)
        save_tsdiff(den, out, {"data": data.name})
    done = result.iteration - result.resumed_from
    resumed = f" (resumed at iteration {result.resumed_from})" if result.resumed_from else ""
    typer.echo(f"trained {done} iterations{resumed} in {result.seconds:.0f} s (final loss {_final_loss(result.losses)}); "
               f"wrote {written(out)}")


@app.command()
@friendly
def distill(
    model: str = typer.Argument(..., help="teacher checkpoint (from `fewstep-ts train`)"),
    out: Path = typer.Option(..., help="student checkpoint stem to write (resumes from OUT.work)"),
    dataset: Optional[str] = DATASET, csv: Optional[Path] = CSV, freq: Optional[str] = FREQ,
    windows: Optional[int] = WINDOWS, timestamp_column: Optional[str] = TS_COL,
    method: str = typer.Option("pd", help="core distillation method trained on data windows: pd (progressive), cd, ..."),
    steps: int = typer.Option(4, "--student-steps", parser=checks.count(1, 1000),
                              help="the student's sampling steps (NFE per guided forecast)"),
    iters: int = typer.Option(600, "--iterations", parser=checks.count(1), help="distillation iterations"),
    seed: int = SEED,
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
) -> None:
    """Distil the model into a few-step student; forecast with it via `fewstep-ts forecast OUT --solver auto`."""
    from .distill import distill_tsdiff

    out = checkpoint_stem(out)
    with output_lock(out):
        den, cfg = _model(model, None)
        data = _data(dataset, csv, freq or cfg.freq, cfg.prediction_length, windows, timestamp_column)
        student = distill_tsdiff(den, data.train, out, method=method, student_steps=steps, iterations=iters, seed=seed,
                                 resume=not restart, **checks.parse_save_every(save_every).fields())
    typer.echo(f"distilled a {student.card.student_steps}-step {method} student; wrote {written(out)} "
               f"(guidance scale for {steps} steps: `--scale` defaults to the step-count rule)")


@app.command()
@friendly
def forecast(
    model: str = typer.Argument(..., help="checkpoint path (from `fewstep-ts train`)"),
    dataset: Optional[str] = DATASET, csv: Optional[Path] = CSV, freq: Optional[str] = FREQ,
    timestamp_column: Optional[str] = TS_COL,
    solver: str = typer.Option("ddpm", help="ddpm, ddim, dpmpp_2m, ... (auto: a distilled student's own rule)"),
    steps: Optional[int] = NUM_STEPS,
    scale: Optional[float] = SCALE,
    energy: str = typer.Option("quantile", help="quantile or mse"),
    num_samples: int = NUM_SAMPLES,
    plot: Optional[Path] = typer.Option(None, help="write a PNG with quantile bands"),
    out_csv: Optional[Path] = typer.Option(None, "--out", help="write the forecast quantiles as CSV"),
) -> None:
    """Forecast the next prediction-length steps after the end of each series."""
    from .forecasting import forecast_future

    with contextlib.ExitStack() as held:  # --out and --plot: writable and ours before any work
        for path in (out_csv, plot):
            if path is not None:
                held.enter_context(output_lock(path))
        den, cfg = _model(model, None)
        guidance = _guidance(solver, steps, scale, energy, den)
        data = _data(dataset, csv, freq or cfg.freq, cfg.prediction_length, 1, timestamp_column)
        _check_sizes(den, data, num_samples)
        table = forecast_future(den, data, guidance, num_samples, plot, out_csv)
    typer.echo(table)


@app.command()
@friendly
def refine(
    model: str = typer.Argument(..., help="checkpoint path"),
    dataset: Optional[str] = DATASET, csv: Optional[Path] = CSV, freq: Optional[str] = FREQ,
    windows: Optional[int] = WINDOWS, timestamp_column: Optional[str] = TS_COL,
    base: str = typer.Option("seasonal_naive", help="gluonts predictor to refine: seasonal_naive or deepar"),
    method: str = typer.Option("ml", help="ml (most likely) or langevin"),
    iterations: int = typer.Option(20, parser=checks.count(1, 10_000), help="refinement iterations"),
    step_size: float = typer.Option(0.1, parser=checks.real(0, 10, lo_open=True), help="refinement step size"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Refine a gluonts forecast with the model; print CRPS/ND/NRMSE before and after on the held-out tail."""
    from .evaluate import deepar, evaluate, metrics_only, seasonal_naive
    from .refine import RefineConfig, RefinedPredictor

    if base not in ("seasonal_naive", "deepar"):
        raise ValueError(f"--base {base!r}; use seasonal_naive or deepar")
    config = RefineConfig(method=method, iterations=iterations, step_size=step_size)
    den, cfg = _model(model, None)
    data = _data(dataset, csv, freq or cfg.freq, cfg.prediction_length, windows, timestamp_column)
    predictor = seasonal_naive(data) if base == "seasonal_naive" else deepar(data, cfg.context_length)
    before = metrics_only(evaluate(predictor, data, desc=base))
    refined = RefinedPredictor(predictor, den, config)
    after = metrics_only(evaluate(refined, data, desc="refine"))
    if as_json:
        typer.echo(json.dumps({"base": base, "method": method, "before": before, "after": after}))
        return
    typer.echo(f"{base}: CRPS {before['CRPS']:.4f} -> refined ({method}) {after['CRPS']:.4f}; "
               f"ND {before['ND']:.4f} -> {after['ND']:.4f}; NRMSE {before['NRMSE']:.4f} -> {after['NRMSE']:.4f}")


@app.command()
@friendly
def evaluate(
    model: str = typer.Argument(..., help="checkpoint path"),
    dataset: Optional[str] = DATASET, csv: Optional[Path] = CSV, freq: Optional[str] = FREQ,
    windows: Optional[int] = WINDOWS, timestamp_column: Optional[str] = TS_COL,
    solver: str = typer.Option("ddpm"), steps: Optional[int] = NUM_STEPS,
    scale: Optional[float] = SCALE, energy: str = typer.Option("quantile"),
    num_samples: int = NUM_SAMPLES,
    deepar_epochs: int = typer.Option(20, parser=checks.count(0, 10_000), help="DeepAR training epochs (0: skip DeepAR)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """CRPS, ND, NRMSE of TSDiff and gluonts' baselines (SeasonalNaive, DeepAR) on the held-out tail."""
    from .evaluate import deepar, evaluate as run, metrics_only, seasonal_naive
    from .predictor import tsdiff_predictor

    den, cfg = _model(model, None)
    guidance = _guidance(solver, steps, scale, energy, den)
    data = _data(dataset, csv, freq or cfg.freq, cfg.prediction_length, windows, timestamp_column)
    _check_sizes(den, data, num_samples)
    rows = {"tsdiff": metrics_only(run(tsdiff_predictor(den, guidance, num_samples), data, num_samples, desc="tsdiff"))}
    rows["seasonal_naive"] = metrics_only(run(seasonal_naive(data), data, num_samples, desc="seasonal naive"))
    if deepar_epochs > 0:
        trained = deepar(data, cfg.context_length, epochs=deepar_epochs)
        rows["deepar"] = metrics_only(run(trained, data, num_samples, desc="deepar"))
    if as_json:
        typer.echo(json.dumps({"data": data.name, "prediction_length": data.prediction_length,
                               "test_windows": len(data.test), **rows}))
        return
    for name, r in rows.items():
        typer.echo(f"{name:15s} CRPS {r['CRPS']:.4f}  ND {r['ND']:.4f}  NRMSE {r['NRMSE']:.4f}  "
                   f"{r['seconds_per_forecast']:.3f} s/forecast")


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("tsdiff-demo"), help="folder for the report, plot and model (resumes from OUT/train)"),
    steps: int = typer.Option(1500, "--iterations", parser=checks.count(1, 1_000_000), help="training iterations"),
    num_samples: int = typer.Option(30, "--num-samples", parser=checks.count(1, MAX_SAMPLES), help="sample paths per forecast"),
    save_every: str = save_every_option(),
    restart: bool = restart_option(),
) -> None:
    """Train a small TSDiff on an artificial seasonal dataset; write report.md and forecast.png (CPU, minutes)."""
    from .demo import check_demo_size, run_demo

    check_demo_size(num_samples)  # before training, not after it
    with output_lock(out, f"the demo folder {out}"):
        report = run_demo(out, steps, num_samples, resume=not restart, **checks.parse_save_every(save_every).fields())
    typer.echo(report.read_text())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
