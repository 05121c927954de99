"""The shipped image teachers under the evaluation protocol (issue 17): every figure with its 95%
interval, the reference rows side by side, several sampling seeds for the headline rows.

    uv run python benchmarks/teachers.py [--n 500] [--seeds 5] [--best-seeds 2] [--tasks digits,shapes,photos] [--reuse-seed-rows]

Per task (``fewstep.image.tasks``: the evaluation classifier's features, the real test split):
the real-vs-real floor (class-balanced train images, same n), a collapse row (one real image per
class, repeated), the teacher with DPM-Solver++(2M) at 1, 2, 4 and 50 steps and with DDPM at 250
steps (its best, docs/benchmarks/teachers.md before this protocol). Rows marked "x S seeds" are the
mean over S sampling seeds with a t-interval over the seeds (the spread between seeds, which the
per-sample bootstrap does not see); the other rows are one seed with the bootstrap interval.
Comparisons are stated against the teacher at 50 steps. Writes docs/benchmarks/teachers.md (and
.json); the "What these figures say" section of that page is written by hand from the run, so
append it again after a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, seeds_row, table  # noqa: E402

from fewstep.core.intervals import Metric, compare  # noqa: E402
from fewstep.core.tasks import Rule, get_task  # noqa: E402

SHOWN = ("dfd", "kid", "precision", "recall", "density", "coverage", "accuracy", "class_fd")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5, help="sampling seeds of the 50-step row")
    p.add_argument("--best-seeds", type=int, default=2, help="sampling seeds of the DDPM-250 row")
    p.add_argument("--tasks", default="digits,shapes,photos")
    p.add_argument("--out", default=str(DOCS / "teachers.md"))
    p.add_argument("--reuse-seed-rows", action="store_true",
                   help="keep the rows measured under several seeds from the existing .json (their t-intervals do not depend on "
                        "the per-sample interval method) and score the one-seed rows again")
    args = p.parse_args()
    old = json.loads(Path(args.out).with_suffix(".json").read_text()) if args.reuse_seed_rows else {}
    t0 = time.perf_counter()
    sections, record = [], {}
    for name in args.tasks.split(","):
        task = get_task(name)
        teacher = task.teacher()
        rows: dict[str, tuple[str, float, float, dict[str, Metric]]] = {}  # label -> (rule, nfe, ms, metrics)

        def run(label: str, rule: Rule, seeds: int) -> None:
            key = label + (f" x {seeds} seeds" if seeds > 1 else "")
            if seeds > 1 and key in old.get(name, {}):
                r = old[name][key]
                rows[key] = (r["rule"], r["nfe"], r["ms_per_sample"], {k: Metric.from_dict(v) for k, v in r["metrics"].items()})
                return
            runs, spent = [], 0.0
            for seed in range(seeds):
                s = task.generate(teacher, rule, args.n, seed)
                runs.append(task.evaluate(s, seed))
                spent += s.seconds_per_sample
            m = runs[0] if seeds == 1 else seeds_row(runs)
            rows[label + (f" x {seeds} seeds" if seeds > 1 else "")] = (s.rule, s.nfe, 1e3 * spent / seeds, m)
            print(name, label, {k: round(v.value, 4) for k, v in m.items()}, f"{time.perf_counter() - t0:.0f}s", flush=True)

        for label, s in (("real data (floor)", task.reference(args.n)), ("collapse (one image per class)", task.collapse(args.n))):
            rows[label] = (s.rule, 0.0, 0.0, task.evaluate(s))
        for steps in (1, 2, 4):
            run(f"teacher, {steps} steps", Rule("dpmpp_2m", steps), 1)
        run("teacher, 50 steps", Rule("dpmpp_2m", 50), args.seeds)
        run("teacher at its best", task.best_rule(), args.best_seeds)
        ref = next(v[3] for k, v in rows.items() if k.startswith("teacher, 50 steps"))
        body = []
        for label, (rule, nfe, ms, m) in rows.items():
            figs = [m[k].format() if k in m else "–" for k in SHOWN]
            verdict = "–" if label.startswith("teacher, 50 steps") else compare(m["dfd"], ref["dfd"])
            body.append([label, rule, f"{nfe:.0f}" if nfe else "–", *figs, verdict, f"{ms:.2f}" if ms else "–"])
        header = ["row", "sampler", "NFE", *(f"{k} {'↑' if ref[k].higher_is_better else '↓'}" for k in SHOWN), "dFD vs 50 steps", "ms/sample"]
        sections += [f"## {name}", "", task.description + ".", "", table(header, body), ""]
        record[name] = {label: {"rule": r, "nfe": nfe, "ms_per_sample": ms, "metrics": {k: v.to_dict() for k, v in m.items()}}
                        for label, (r, nfe, ms, m) in rows.items()}
    text = "\n".join([
        "# Shipped teachers under the evaluation protocol",
        "",
        f"`uv run python benchmarks/teachers.py --n {args.n} --seeds {args.seeds} --best-seeds {args.best_seeds} --tasks {args.tasks}"
        f"{' --reuse-seed-rows' if args.reuse_seed_rows else ''}` on {machine()}; n = {args.n} class-balanced samples per row, "
        f"no guidance; total {time.perf_counter() - t0:.0f} s"
        + (" (the rows over seeds kept from the previous run; the one-seed rows scored again)." if args.reuse_seed_rows else "."),
        "",
        "Figures are in the evaluation classifier's features against the real test split, each with its 95% interval: "
        "for one-seed rows the per-sample interval (a jackknife stratified by class for dFD and the per-class FD, a bootstrap for the rest), "
        "a t-interval over sampling seeds for rows marked \"x S seeds\". "
        "dFD is biased upwards at finite n, so compare rows at the same n only; KID is unbiased (and may be below 0). "
        "The verdict column compares each row's dFD with the teacher at 50 steps (better / worse / not distinguishable at 95%). "
        "The floor row is the best any model can expect at this n; the collapse row shows what recall and coverage near 0 look like.",
        "",
        *sections,
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
