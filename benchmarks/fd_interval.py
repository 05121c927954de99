"""Which interval tells the truth about a one-seed Fréchet distance: bootstrap or jackknife?

    uv run python benchmarks/fd_interval.py [--n 500] [--seeds 10] [--tasks digits,shapes,photos]

For each task the shipped teacher draws ``--seeds`` independent sample sets (DPM-Solver++, 4 and 50
steps: a poor and a good sampler) of n class-balanced images. The spread of dFD and of the
per-class FD across those sets, the reference held fixed as the protocol holds it, is the truth a
one-seed interval should report. Beside it: the standard error a one-seed interval claims under
the standard-error bootstrap of the generated rows (what fewstep used before), the delete-a-group
jackknife (50 groups, ``fewstep.core.intervals.jackknife``), and both stratified by class (what
fewstep uses now: the stratified jackknife), averaged over the seeds, and how often each one's
95% interval holds the mean over seeds.
Writes docs/benchmarks/fd_interval.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, table  # noqa: E402


METHODS = ("bootstrap", "jackknife", "stratified bootstrap", "stratified jackknife")


def main() -> None:
    from threadpoolctl import threadpool_limits

    from fewstep.core.intervals import bootstrap, jackknife
    from fewstep.core.metrics import frechet_distance_from_stats, gaussian_stats
    from fewstep.core.tasks import Rule, get_task
    from fewstep.image.quality import _test_features, _test_labels, features_and_predictions

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", default="4,50")
    p.add_argument("--tasks", default="digits,shapes,photos")
    p.add_argument("--resamples", type=int, default=200)
    a = p.parse_args()
    t0 = time.perf_counter()
    rows = []
    for name in a.tasks.split(","):
        task = get_task(name)
        teacher = task.teacher()
        real = _test_features(name).double().numpy()
        real_y = np.asarray(_test_labels(name))
        stats_real = gaussian_stats(real)
        for steps in (int(s) for s in a.steps.split(",")):
            vals = {"dFD": [], "class FD": []}
            se = {(k, m): [] for k in vals for m in METHODS}
            for seed in range(a.seeds):
                x, y = task.generate(teacher, Rule("dpmpp_2m", steps), a.n, seed).data
                f = features_and_predictions(name, x)[0].double().numpy()
                y = np.asarray(y)
                classes = np.unique(y)
                per_class = {c: gaussian_stats(real[real_y == c]) for c in classes}

                def pooled(i):
                    return frechet_distance_from_stats(*stats_real, *gaussian_stats(f[i]))

                def by_class(i):
                    return float(np.mean([frechet_distance_from_stats(*per_class[c], *gaussian_stats(f[i[y[i] == c]])) for c in classes]))

                with threadpool_limits(limits=1, user_api="blas"):
                    groups = [np.flatnonzero(y == c) for c in classes]
                    for key, fn in (("dFD", pooled), ("class FD", by_class)):
                        vals[key].append(fn(np.arange(a.n)))
                        if key == "dFD":  # class FD is only ever stratified (each class on its own)
                            se[(key, "bootstrap")].append(bootstrap(fn, a.n, resamples=a.resamples, seed=seed).se)
                            se[(key, "jackknife")].append(jackknife(fn, a.n, seed=seed).se)
                        rng = np.random.default_rng(seed)
                        reps = [fn(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])) for _ in range(a.resamples)]
                        se[(key, "stratified bootstrap")].append(float(np.std(reps, ddof=1)))
                        se[(key, "stratified jackknife")].append(jackknife(fn, a.n, seed=seed, strata=y).se)
            for key, v in vals.items():
                v = np.array(v)
                truth = float(v.std(ddof=1))
                row = [name, f"{steps} steps", key, f"{v.mean():.3f}", f"{truth:.3f}"]
                for method in METHODS:
                    if not se[(key, method)]:
                        row += ["–", "–", "–"]
                        continue
                    s = np.array(se[(key, method)])
                    held = float(np.mean(np.abs(v - v.mean()) <= 1.96 * s))
                    row += [f"{s.mean():.3f}", f"{s.mean() / truth:.2f}", f"{held:.0%}"]
                rows.append(row)
                print(row, f"{time.perf_counter() - t0:.0f}s", flush=True)
    text = "\n".join([
        "# One-seed intervals for Fréchet distances: bootstrap against jackknife",
        "",
        f"`uv run python benchmarks/fd_interval.py --n {a.n} --seeds {a.seeds} --steps {a.steps} --tasks {a.tasks} --resamples {a.resamples}` "
        f"on {machine()}; "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        f"Each row: the shipped teacher's samples under {a.seeds} sampling seeds (n = {a.n}, class-balanced), scored against the "
        "fixed real test split in the evaluation classifier's 128 features. \"sd over seeds\" is the spread a one-seed interval "
        "should report; each method's se is the mean over the seeds of what it claims from one seed, \"ratio\" is that over the "
        "truth (1 is honest, above 1 too wide) and \"held\" is how often its 95% interval around one seed's value holds the mean "
        f"over seeds (about 95% when honest; with {a.seeds} seeds this is coarse). Bootstrap: {a.resamples} resamples with "
        "replacement of the generated rows. Jackknife: 50 groups, one left out at a time. Stratified: within each class, so "
        "every resample or leave-out keeps the class-balanced design (the per-class FD is only ever computed that way). "
        "Features cluster by class, so an unstratified resample moves dFD mostly by changing the class mix, which another "
        "class-balanced set never does.",
        "",
        table(["task", "teacher", "figure", "mean", "sd over seeds", *(f"{m} {c}" for m in METHODS for c in ("se", "ratio", "held"))], rows),
        "",
    ])
    out = DOCS / "fd_interval.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
