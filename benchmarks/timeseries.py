"""TSDiff on one artificial and two statsmodels series vs gluonts' baselines, in one run (CPU).

    OMP_NUM_THREADS=1 uv run python benchmarks/timeseries.py [--steps 2000] [--samples 100]

For each dataset: train TSDiff (fewstep core train loop) on the training part, then score with
gluonts' Evaluator on the same held-out windows: TSDiff guided (ddpm 100 steps, and the core's fast
solvers at 20, 10 and 4 NFE), a 4-step progressive-distillation student of the same model (core
distillation, 600 iterations), SeasonalNaive, SeasonalNaive refined by TSDiff (most-likely and
Langevin), DeepAR (gluonts.torch). Writes docs/benchmarks/timeseries.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import DOCS, machine

from fewstep.timeseries.benchmarking import STUDENTS, run_dataset

DATASETS = ("complex_seasonal", "sunspots", "elnino")


def goals(res: dict) -> list[str]:
    rows = {r["method"]: r for r in res["rows"]}
    full = next(r for m, r in rows.items() if m.startswith("TSDiff guided, ddpm 100"))
    deep = next((r for m, r in rows.items() if m.startswith("DeepAR")), None)
    out = []
    if deep:
        ok = full["CRPS"] <= deep["CRPS"]
        out.append(f"TSDiff guided CRPS {full['CRPS']:.4f} vs DeepAR {deep['CRPS']:.4f}: {'met' if ok else 'not met'}")
    for m, r in rows.items():
        if (m.startswith("TSDiff guided,") or " student, " in m) and r["nfe"] <= 20:
            rel = r["CRPS"] / full["CRPS"] - 1
            out.append(f"{m} ({100 // r['nfe']}x fewer NFE): CRPS {100 * rel:+.1f}% vs 100 steps: "
                       f"{'within 5%' if rel <= 0.05 else 'not within 5%'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500, help="TSDiff training steps per dataset")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--deepar-epochs", type=int, default=20)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--runs", default="runs/timeseries", help="training folders; a finished run there is reused")
    ap.add_argument("--no-students", dest="students", action="store_false", help="skip the distilled few-step students")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = []
    for name in args.datasets.split(","):
        res = run_dataset(name, train_steps=args.steps, num_samples=args.samples, deepar_epochs=args.deepar_epochs,
                          out_dir=Path(args.runs) / name, students=STUDENTS if args.students else ())
        results.append(res)
        print(f"\n## {name}\n{res['table']}\n" + "\n".join(goals(res)), flush=True)
    total = time.perf_counter() - t0
    lines = [
        "# Time series: TSDiff (predict / refine) vs gluonts baselines", "",
        f"Machine: {machine()}; OMP_NUM_THREADS=1, torch.set_num_threads(1). Whole run: {total / 60:.1f} min.",
        f"Command: `OMP_NUM_THREADS=1 uv run python benchmarks/timeseries.py --steps {args.steps} "
        f"--samples {args.samples} --deepar-epochs {args.deepar_epochs}`", "",
        "CRPS = gluonts `mean_wQuantileLoss` (quantiles 0.05..0.95), ND and NRMSE from gluonts' `Evaluator` via "
        "`make_evaluation_predictions`; lower is better. NFE = denoiser calls per sample (guided calls also "
        "backpropagate once). Seconds per forecast = wall time / number of test windows, "
        f"{args.samples} sample paths each.", "",
    ]
    for res in results:
        lines += [
            f"## {res['name']} (freq {res['freq']}, prediction length {res['prediction_length']}, context "
            f"{res['context_length']}, lags {res['lags']}, {res['scaling']} scaling, {res['test_windows']} test windows)", "",
            f"TSDiff: {res['params']} parameters, {res['train_steps']} training steps"
            + (" (reused from an earlier run's checkpoint in --runs)." if res["resumed"] else f" in {res['train_seconds']:.0f} s.")
            + "".join(f" Student {k}: {res['student_iters']} distillation iterations"
                      + (" (reused from --runs)." if sec < 5 else f", {sec:.0f} s.")
                      for k, sec in res["student_seconds"].items()),
            "",
            res["table"], "", *[f"- {g}" for g in goals(res)], "",
        ]
    (DOCS / "timeseries.md").write_text("\n".join(lines))
    print(f"\nwrote {DOCS / 'timeseries.md'} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
