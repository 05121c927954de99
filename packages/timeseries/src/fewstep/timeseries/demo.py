"""``fewstep-ts demo``: train a small TSDiff on an artificial seasonal dataset, forecast, refine, report."""

from __future__ import annotations

from pathlib import Path

from fewstep.core import checks
from fewstep.core.io import write_text_atomic

from .benchmarking import plot_panels, run_dataset
from .guidance import sampling_bytes
from .recipes import recipe_config

DATASET, HIDDEN, SERIES = "seasonal", 48, 8  # gluonts' artificial seasonal recipe: 8 hourly series


def check_demo_size(num_samples: int) -> None:
    """Refuse, before training, a ``num_samples`` whose guided sampling would not fit in memory."""
    cfg = recipe_config(DATASET, "h", hidden=HIDDEN)
    need = sampling_bytes(min(16, 2 * SERIES) * num_samples, cfg.channels, cfg.length, cfg.hidden, cfg.layers)
    checks.check_fits(need, f"guided sampling of 16 windows x {num_samples:,} samples", "lower --num-samples")


def run_demo(out: str | Path, steps: int = 1500, num_samples: int = 30, save_every: int | None = None,
             save_every_seconds: float | None = 120.0, resume: bool = True) -> Path:
    """Writes ``out/report.md``, ``out/forecast.png`` and ``out/model.{safetensors,json}``; returns the report.

    Training resumes from ``out/train`` when it holds a run with the same settings (``resume=False``:
    start over)."""
    check_demo_size(num_samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = run_dataset(DATASET, train_steps=steps, num_samples=num_samples, deepar_epochs=0, out_dir=out,
                      fast=(("ddim", 20, 2.0), ("dpmpp_2m", 10, 1.0)), hidden=HIDDEN, save_every=save_every,
                      save_every_seconds=save_every_seconds, resume=resume)
    plot_panels(res, out / "forecast.png")
    lines = [
        "# fewstep-ts demo", "",
        f"TSDiff ({res['params']} parameters) trained {steps} steps in {res['train_seconds']:.0f} s on gluonts' "
        f"artificial seasonal series (recipe: level + daily sine + noise), hourly, prediction length "
        f"{res['prediction_length']}, {res['test_windows']} held-out windows. Metrics from gluonts' Evaluator.", "",
        res["table"], "",
        "![forecast](forecast.png)", "",
        f"Model: {out / 'model'}.safetensors (+ .json card); reload with `fewstep.timeseries.load_tsdiff`.",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
