"""Quality of the shipped teachers at 50 and 250 steps (and the real-data floor).

    uv run python benchmarks/teachers.py [--n 1000]

Writes docs/benchmarks/teachers.md.
"""

from __future__ import annotations

import argparse
import sys
import time


sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import DOCS, machine, table  # noqa: E402

from fewstep.image.evaluate import EvalConfig, evaluate_denoiser  # noqa: E402
from fewstep.image.quality import real_data_baseline  # noqa: E402
from fewstep.image.registry import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", default="50,250")
    p.add_argument("--solvers", default="dpmpp_2m,ddpm")
    args = p.parse_args()
    rows = []
    t0 = time.perf_counter()
    for name, dataset in (("digits-teacher", "digits"), ("shapes-teacher", "shapes")):
        den = load_model(name)
        floor = real_data_baseline(dataset, n=args.n)
        rows.append([name, "real data (train vs test)", "-", "-", floor.dfd, floor.accuracy, floor.precision, floor.recall, "-"])
        for solver in args.solvers.split(","):
            for steps in (int(s) for s in args.steps.split(",")):
                r = evaluate_denoiser(den, EvalConfig(solver=solver, num_steps=steps, n=args.n, seed=0))
                rows.append([name, solver, steps, int(r["nfe"]), r["dfd"], r["accuracy"], r["precision"], r["recall"], f"{r['seconds_per_sample'] * 1e3:.2f}"])
                print(rows[-1], flush=True)
    header = ["model", "solver", "steps", "NFE", "dFD", "accuracy", "precision", "recall", "ms/sample"]
    text = "\n".join(
        [
            "# Shipped teachers",
            "",
            f"`uv run python benchmarks/teachers.py --n {args.n}` on {machine()}; {args.n} class-balanced samples, seed 0,"
            f" no guidance; total {time.perf_counter() - t0:.0f} s. dFD: Fréchet distance on the shipped classifier's"
            " features vs the real test split (lower is better; the real-data row is the floor at the same n).",
            "",
            table(header, rows),
            "",
        ]
    )
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "teachers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
