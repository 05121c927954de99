"""One dataset, every method, one run: what the benchmark script and the demo share.

TSDiff guided (100-step DDPM and fast core solvers), SeasonalNaive and its TSDiff refinement,
DeepAR from gluonts.torch, all scored by gluonts' Evaluator on the same held-out windows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .data import load
from .evaluate import deepar, evaluate, metrics_only, seasonal_naive
from .distill import distill_tsdiff
from .guidance import GuidanceConfig, default_scale
from .model import TrainSettings, save_tsdiff, train_tsdiff
from .predictor import tsdiff_predictor
from .recipes import RECIPES, recipe_config
from .refine import RefineConfig, RefinedPredictor


# Fast variants: (solver, steps, guidance scale). Bigger steps take a proportionally bigger guidance
# step, so the scale is lowered with the step count (scale 4 at 20 steps overshoots on some samples).
FAST = (("ddim", 20, 2.0), ("dpmpp_2m", 20, 2.0), ("dpmpp_2m", 10, 1.0), ("ddim", 4, 0.1))
STUDENTS = (("pd", 4),)  # (core distillation method, student steps): the few-step rows


def _fmt_table(rows: list[dict]) -> str:
    head = "| method | NFE | CRPS | ND | NRMSE | s / forecast |\n|---|---|---|---|---|---|"
    body = [f"| {r['method']} | {r['nfe']} | {r['CRPS']:.4f} | {r['ND']:.4f} | {r['NRMSE']:.4f} | "
            f"{r['seconds_per_forecast']:.3f} |" for r in rows]
    return "\n".join([head, *body])


def run_dataset(name: str, train_steps: int = 1500, num_samples: int = 100, deepar_epochs: int = 20,
                out_dir: Path | None = None, fast: tuple[tuple[str, int, float], ...] = FAST,
                scale: float = 4.0, seed: int = 0, progress: bool = True, windows: int | None = None,
                hidden: int = 64, students: tuple[tuple[str, int], ...] = (), student_iters: int = 600,
                save_every: int | None = None, save_every_seconds: float | None = 120.0, resume: bool = True) -> dict:
    """Train TSDiff on ``name``'s training part and score every method on its test windows.

    Training resumes from ``out_dir`` when it holds a run with the same settings (``resume=False``
    starts over); the resumable state is written every ``save_every`` iterations or
    ``save_every_seconds`` of work."""
    p = RECIPES[name][0]
    data = load(name, p, windows)
    cfg = recipe_config(name, data.freq, hidden=hidden)
    run_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"tsdiff-{name}-"))  # reused: resumes
    saving = {"save_every": save_every, "save_every_seconds": save_every_seconds}
    settings = TrainSettings(iterations=train_steps, seed=seed, progress=progress, **saving)
    den, result = train_tsdiff(cfg, data.train, settings, run_dir / "train", resume=resume)
    save_tsdiff(den, run_dir / "model", {"data": name})
    rows, kept = [], {}

    def add(method, predictor, nfe, key=None):
        torch.manual_seed(seed)
        r = evaluate(predictor, data, num_samples, progress, method)
        rows.append({"method": method, "nfe": nfe, **metrics_only(r)})
        if key:
            kept[key] = r

    add(f"TSDiff guided, ddpm 100 steps (scale {scale:g})", tsdiff_predictor(den, GuidanceConfig(scale=scale), num_samples, seed=seed),
        100, "tsdiff")
    for solver, steps, s in fast:
        grid = "uniform" if solver in ("ddpm", "ddim") else "logsnr"
        g = GuidanceConfig(scale=s, solver=solver, num_steps=steps, grid=grid)
        add(f"TSDiff guided, {solver} {steps} steps (scale {s:g})", tsdiff_predictor(den, g, num_samples, seed=seed),
            steps)
    student_seconds = {}
    for method, k in students:  # a few-step student distilled from this teacher by the core's objective
        t0 = time.perf_counter()
        student = distill_tsdiff(den, data.train, run_dir / f"student-{method}{k}", method, k, iterations=student_iters,
                                 seed=seed, progress=progress, resume=resume, **saving)
        student_seconds[f"{method}{k}"] = time.perf_counter() - t0
        s = default_scale(k)
        add(f"TSDiff {method} student, {k} steps (scale {s:g})", tsdiff_predictor(student, GuidanceConfig(scale=s, solver="auto"),
                                                                          num_samples, seed=seed), k)
    sn = seasonal_naive(data)
    add("SeasonalNaive (gluonts)", sn, 0, "naive")
    refine_cfg = RefineConfig(method="ml", iterations=20)
    add("SeasonalNaive + TSDiff refine (ML, 20 it.)", RefinedPredictor(sn, den, refine_cfg, num_samples), 20, "refined")
    add("SeasonalNaive + TSDiff refine (Langevin, 20 it.)",
        RefinedPredictor(sn, den, RefineConfig(method="langevin", iterations=20), num_samples), 20)
    if deepar_epochs > 0:
        trained = deepar(data, cfg.context_length, epochs=deepar_epochs, seed=seed)
        add(f"DeepAR (gluonts.torch, {deepar_epochs} epochs)", trained, 0, "deepar")
    return {
        "name": name, "freq": data.freq, "prediction_length": data.prediction_length, "test_windows": len(data.test),
        "context_length": cfg.context_length, "lags": list(cfg.lags), "scaling": cfg.scaling,
        "params": sum(q.numel() for q in den.parameters()), "train_seconds": result.seconds,
        "resumed": result.resumed_from == train_steps,
        "train_steps": train_steps, "student_seconds": student_seconds, "student_iters": student_iters, "rows": rows, "table": _fmt_table(rows), "kept": kept, "model": den,
    }


def plot_panels(res: dict, path: Path, n: int = 3) -> Path:
    """Forecast plot of the first ``n`` test windows: TSDiff guided and refined SeasonalNaive."""
    from .plot import plot_forecasts

    p = res["prediction_length"]
    panels = []
    for key, label in (("tsdiff", "TSDiff guided (ddpm 100)"), ("refined", "SeasonalNaive refined by TSDiff")):
        if key not in res["kept"]:
            continue
        r = res["kept"][key]
        for f, ts in list(zip(r["forecasts"], r["series"]))[:n]:
            values = np.asarray(ts).reshape(-1)
            panels.append((f"{res['name']} {f.item_id}: {label}", values[:-p], f.samples, values[-p:]))
    return plot_forecasts(panels, 3 * p, path)
