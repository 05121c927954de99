"""Trajectory distillation side by side: every method on a shipped teacher under one training budget.

    uv run python benchmarks/distill_trajectory.py --teacher digits --methods cd,pd,scm   # train + measure
    uv run python benchmarks/distill_trajectory.py --teacher digits --baseline            # the teacher rows
    uv run python benchmarks/distill_trajectory.py --render                               # only the markdown
    python benchmarks/distill_trajectory.py --teacher shapes --methods all --jobs 7       # GPU: 7 at once

Each method trains once (its natural step count: 4 for progressive distillation, 1 otherwise), with
the same iterations, batch and learning rate, initialised from the teacher (SlimFlow: a smaller
net); the student is then sampled with its own rule at 1, 2 and 4 steps. Rows accumulate in
docs/benchmarks/distill_trajectory.json (one per teacher and method); runs go to runs/distill/.
Writes docs/benchmarks/distill_trajectory.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from distill_bench import Family, main  # noqa: E402

TRAJECTORY = Family(
    name="trajectory",
    title="Trajectory distillation",
    script=__file__,
    methods=("pd", "guided-pd", "cd", "mlcm", "hyper-sd", "scott", "slam", "scm", "rcm", "tbcm", "boot", "reflow", "slimflow", "arcflow"),
    train_steps={"pd": 4, "guided-pd": 4, "mlcm": 4, "hyper-sd": 1},  # others: 1-step students
    lr={"slimflow": 2e-4},  # its smaller student starts from scratch; 5e-5 leaves it at dFD ~75 (others: 5e-5)
    intro=(
        "`uv run python benchmarks/distill_trajectory.py --teacher T --methods ...` (see the script's docstring). "
        "Every method trains once under the same budget (iterations, batch 64, lr 5e-5, EMA 0.999 of the student "
        "weights), initialised from the teacher unless noted; the student is then sampled with its own rule at "
        "1, 2 and 4 steps (n samples, class-balanced, seed 0). dFD: Fréchet distance of the shipped classifier's "
        "features to the real test split (lower is better). The learning rate is 5e-5 for every method except "
        "SlimFlow (2e-4: its smaller student starts from scratch). Guided-PD's student is sampled at its default "
        "guidance w, so it is compared against the unguided teacher."
    ),
)

if __name__ == "__main__":
    main(TRAJECTORY, __doc__)
