"""Guidance scale against step count for TSDiff on complex_seasonal: teacher DDIM / DPM-Solver++(2M) and
the 4- and 8-step progressive-distillation students (the sweep behind ``guidance.default_scale``).

    OMP_NUM_THREADS=1 uv run python benchmarks/timeseries_scales.py   # needs benchmarks/timeseries.py's runs

Reuses runs/timeseries/complex_seasonal/model (and trains the students there if missing); 30 sample
paths per forecast, seed 0. Writes docs/benchmarks/timeseries_scales.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import DOCS, machine, table

from fewstep.timeseries import load_tsdiff
from fewstep.timeseries.data import load
from fewstep.timeseries.distill import distill_tsdiff
from fewstep.timeseries.evaluate import evaluate, metrics_only
from fewstep.timeseries.guidance import GuidanceConfig
from fewstep.timeseries.predictor import tsdiff_predictor
from fewstep.timeseries.recipes import RECIPES

NAME = "complex_seasonal"
SWEEP = {4: (0.1, 0.25, 0.5, 1.0), 8: (0.1, 0.25, 0.5), 10: (0.25, 0.5, 1.0), 20: (0.5, 1.0, 2.0)}


def main() -> None:
    torch.set_num_threads(1)
    run = Path("runs/timeseries") / NAME
    data = load(NAME, RECIPES[NAME][0], None)
    teacher = load_tsdiff(run / "model")

    def crps(den, g) -> float:
        torch.manual_seed(0)
        return metrics_only(evaluate(tsdiff_predictor(den, g, 30), data, 30, False, "sweep"))["CRPS"]

    rows = [["ddpm (teacher)", 100, 4.0, crps(teacher, GuidanceConfig(scale=4.0))]]
    for k, scales in SWEEP.items():
        student = distill_tsdiff(teacher, data.train, run / f"student-pd{k}", "pd", k, progress=False) if k in (4, 8) else None
        for s in scales:
            rows.append(["ddim (teacher)", k, s, crps(teacher, GuidanceConfig(scale=s, solver="ddim", num_steps=k, grid="uniform"))])
            rows.append(["dpmpp_2m (teacher)", k, s, crps(teacher, GuidanceConfig(scale=s, solver="dpmpp_2m", num_steps=k, grid="logsnr"))])
            if student is not None:
                rows.append([f"pd student ({k} steps)", k, s, crps(student, GuidanceConfig(scale=s, solver="auto"))])
            print(rows[-1], flush=True)
    lines = ["# TSDiff: guidance scale against step count (complex_seasonal)", "",
             f"`OMP_NUM_THREADS=1 uv run python benchmarks/timeseries_scales.py` ({machine()}); 30 sample paths, "
             "16 test windows, CRPS from gluonts' Evaluator (lower is better).", "",
             table(["sampler", "NFE", "scale", "CRPS"], rows), ""]
    (DOCS / "timeseries_scales.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
