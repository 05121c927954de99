"""Time-series task for cross-modality experiments (``fewstep.tasks`` entry point): ``seasonal``.

TSDiff (Kollovieh et al. 2023) forecasting with observation self-guidance on gluonts' artificial
``seasonal`` series: the shipped ``seasonal-tsdiff`` teacher, distilled on its training windows
(the windows ``distill_tsdiff`` trains on) and scored by gluonts' Evaluator on held-out series:
CRPS (mean weighted quantile loss), ND and NRMSE, each with a 95% interval bootstrapped over the
forecast windows. One "sample" is one forecast window (``SAMPLE_PATHS`` sample paths).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fewstep.core.tasks import Budget, Metric, Rule, Samples, Task, bootstrap, bootstrap_ratio

SAMPLE_PATHS = 16  # sample paths per forecast window (gluonts SampleForecast), the quantiles' support
WINDOWS = 4096  # training windows drawn once for distillation (distill_tsdiff's default)
EVAL_SEED = 2  # held-out series come from a seed the teacher never saw (it trained on seed 1)
BATCH = 16  # forecast windows per guided sampling batch (tsdiff_predictor's default)


class ForecastTask(Task):
    """Guided TSDiff forecasts of a shipped teacher on fresh series of its own artificial recipe."""

    modality = "timeseries"
    primary = "CRPS"
    default_n = 16
    min_n = 2
    # distill_tsdiff's defaults: 600 iterations, batch 64, lr 2e-4, EMA 0.995.
    budget = Budget(iterations=600, batch_size=64, lr=2e-4, ema_decay=0.995, warmup_iterations=50)

    def __init__(self, name: str, dataset: str, teacher_name: str, prediction_length: int, description: str):
        self.name, self.dataset, self.teacher_name = name, dataset, teacher_name
        self.prediction_length = prediction_length
        self.description = f"{description}; teacher {teacher_name}"
        self.sample_shape = (2, 72)  # (1 + lags, context + prediction) of the shipped seasonal-tsdiff card
        self.conditioning = "none (forecasts by observation self-guidance on the context)"

    def teacher(self):
        from .model import load_tsdiff

        den = load_tsdiff(self.teacher_name).eval()
        if tuple(den.sample_shape) != self.sample_shape:
            raise ValueError(f"{self.teacher_name} samples {den.sample_shape}, the task expects {self.sample_shape}")
        return den

    def data(self, split: str, n: int | None = None):
        """gluonts SeriesData: "train" is the teacher's own training data, "eval" ``n`` fresh series
        (one held-out window each, drawn from seed EVAL_SEED; the first k series do not depend on n)."""
        from .data import artificial

        if split == "train":
            return artificial(self.dataset, self.prediction_length, 2)  # how seasonal-tsdiff was trained
        if split == "eval":
            return artificial(self.dataset, self.prediction_length, windows=1, num_series=n or self.default_n, seed=EVAL_SEED)
        raise ValueError(f"split {split!r}: use 'train' or 'eval'")

    def distill_data(self, data_kind: str, seed: int = 0):
        """Real data: gluonts training windows (x (N, C, L), time features or None), as distill_tsdiff draws.
        Trajectory and data-free objectives need no windows, which holds only without time features."""
        from .features import training_windows
        from .model import load_tsdiff, tsdiff_config

        cfg = tsdiff_config(load_tsdiff(self.teacher_name))
        if data_kind == "real":
            return training_windows(cfg, self.data("train").train, WINDOWS, seed)
        if cfg.time_features:
            from .distill import TESTED

            raise ValueError(f"{data_kind!r}-data objectives never see the windows' time features this teacher needs; "
                             f"use a real-data method such as {', '.join(TESTED)}")
        return None

    def default_rule(self) -> Rule:
        return Rule("ddpm", 100)  # TSDiff's guided DDPM (GuidanceConfig's default)

    def rule_at(self, nfe: int) -> Rule:
        return Rule("ddim", nfe)  # the fast training-free rows of fewstep-ts' benchmark

    def generate(self, model, rule: Rule, n: int, seed: int = 0, progress: bool = False) -> Samples:
        from .evaluate import evaluate
        from .guidance import GuidanceConfig, default_scale
        from .predictor import tsdiff_predictor

        steps = rule.num_steps or model.card.student_steps or 100  # None: the model's own
        scale = default_scale(steps)  # a coarser grid takes a bigger guidance step: lower the scale
        guidance = GuidanceConfig(scale=scale, solver=rule.solver, num_steps=rule.num_steps, grid="uniform")
        data = self.data("eval", n)
        model.reset_counters()
        r = evaluate(tsdiff_predictor(model, guidance, SAMPLE_PATHS, BATCH, seed), data, SAMPLE_PATHS, progress,
                     f"forecast {rule.solver}")
        nfe = model.nfe / math.ceil(n / BATCH)  # Denoiser calls per sample path (each guided call adds a backward)
        solver = "own rule" if rule.solver == "auto" else rule.solver
        label = f"{solver}, {steps} step{'s' * (steps != 1)}, guidance scale {scale:g}, {SAMPLE_PATHS} paths"
        return Samples({"forecasts": r["forecasts"], "series": r["series"]}, n, nfe, r["seconds_per_forecast"], label)

    def evaluate(self, samples: Samples, seed: int = 0) -> dict[str, Metric]:
        """gluonts' Evaluator per window, then CRPS / ND / NRMSE as it aggregates them, bootstrapped over windows."""
        import warnings

        from gluonts.evaluation import Evaluator

        from .evaluate import QUANTILES

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, items = Evaluator(quantiles=QUANTILES, num_workers=0)(samples.data["series"], samples.data["forecasts"])
        ql = items[[f"QuantileLoss[{q}]" for q in QUANTILES]].to_numpy().mean(1)  # (W,) mean over quantiles
        ats, mse = items["abs_target_sum"].to_numpy(), items["MSE"].to_numpy()
        atm = items["abs_target_mean"].to_numpy()
        # gluonts: mean_wQuantileLoss = mean_q sum QL_q / sum |y|; ND = sum |err| / sum |y|;
        # NRMSE = sqrt(mean MSE) / mean(abs_target_mean).
        return {
            "CRPS": bootstrap_ratio(ql, ats, seed=seed),
            "ND": bootstrap_ratio(items["abs_error"].to_numpy(), ats, seed=seed),
            "NRMSE": bootstrap(lambda idx: np.sqrt(mse[idx].mean()) / atm[idx].mean(), len(ats), seed=seed),
        }

    def picture(self, rows: Mapping[str, Samples], path: Path) -> Path:
        """Forecast bands of the first held-out window, one panel per row (fewstep.timeseries.plot)."""
        from .plot import plot_forecasts

        p = self.prediction_length
        panels = []
        for label, s in rows.items():
            f, ts = s.data["forecasts"][0], s.data["series"][0]
            values = np.asarray(ts).reshape(-1)
            panels.append((f"{label}: {s.rule}", values[:-p], f.samples, values[-p:]))
        return plot_forecasts(panels, 3 * p, path, title=f"{self.name}: window {s.data['forecasts'][0].item_id}")


SEASONAL = ForecastTask("seasonal", "seasonal", "seasonal-tsdiff", 24,
                        "gluonts artificial hourly series (level + daily sine + noise), 24-step forecasts, CRPS via gluonts")

__all__ = ["SEASONAL", "ForecastTask"]
