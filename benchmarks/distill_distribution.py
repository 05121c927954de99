"""Distribution-matching distillation side by side: every method on a shipped teacher, one budget.

    uv run python benchmarks/distill_distribution.py --teacher digits --methods dmd,dmd2   # train + measure
    uv run python benchmarks/distill_distribution.py --teacher digits --baseline           # the teacher rows
    uv run python benchmarks/distill_distribution.py --teacher digits --methods all --jobs 2
    uv run python benchmarks/distill_distribution.py --render

One-step students unless the row says METHOD@K (DMD2 with backward simulation, TDM and MMD-DDM
train K-step students). Every method starts from the teacher's weights, trains for the same
iterations, batch and learning rate with Adam betas (0, 0.999) as DMD2 does, and is sampled with its
own rule at 1, 2 and 4 steps. MSD trains two students (five classes each) for half the iterations
each, so its total budget is the same. Rows accumulate in docs/benchmarks/distill_distribution.json;
writes docs/benchmarks/distill_distribution.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from distill_bench import Family, main  # noqa: E402


def _reward(objective, teacher: str) -> dict:
    """Flash-DMD's reward term: the shipped classifier's log-probability of the requested class."""
    if getattr(objective, "reward_weight", 0) > 0:
        from fewstep.image.rewards import classifier_reward

        return {"reward": classifier_reward(teacher)}
    return {}


@dataclass
class _RouterResult:
    student: object
    seconds: float
    peak_bytes: int
    peak_kind: str


def _train_msd(teacher, objective, cfg, out, data=None, work_dir=None, card=None, **_):
    """MSD: two one-step students (round-robin halves of the classes), each for half the iterations (and time)."""
    from fewstep.core.distill.multi_student import distill_multi_student

    budget = None if cfg.train.max_seconds is None else cfg.train.max_seconds / 2  # a time budget is split too
    half = replace(cfg, train=replace(cfg.train, iterations=max(1, cfg.train.iterations // 2), max_seconds=budget))
    opts = {k: v for k, v in objective.describe().items() if k not in ("method", "classes")}
    router, results = distill_multi_student(teacher, half, out, num_students=2, work_dir=work_dir, progress=False, **opts)
    return _RouterResult(router, sum(r.seconds for r in results), max(r.peak_bytes for r in results), results[0].peak_kind)


def _goals(base: dict, rows: list[dict]) -> list[str]:
    if "50" not in base:
        return []
    t50, r50 = base["50"]["dfd"], base["50"]["recall"]
    out = ["Goals:", ""]
    for dmd2 in (r for r in rows if r["options"].get("method") == "dmd2" and r["trained_steps"] == 1):  # probes too
        d, rc = dmd2["eval"]["1"]["dfd"], dmd2["eval"]["1"]["recall"]
        out.append(f"- DMD2's 1-step student ({dmd2['method']}) at or below the teacher's 50-step dFD ({t50:.3f}) with "
                   f"recall within 10% of the teacher's ({r50:.3f}): dFD {d:.3f}, recall {rc:.3f}: "
                   f"**{'met' if d <= t50 and rc >= 0.9 * r50 else 'not met'}**")
    one = [r for r in rows if r["trained_steps"] == 1]
    if one:
        best = min(one, key=lambda r: r["eval"]["1"]["dfd"])
        out.append(f"- best 1-step student: {best['method']} at {best['eval']['1']['dfd']:.3f} "
                   f"({best['eval']['1']['dfd'] / t50:.2f}x the teacher's 50-step dFD; the teacher at 1 step: {base['1']['dfd']:.1f})")
    four = [r for r in rows if r["trained_steps"] == 4]
    if four and "4" in base:
        best = min(four, key=lambda r: r["eval"]["4"]["dfd"])
        out.append(f"- best 4-step student: {best['method']} at {best['eval']['4']['dfd']:.3f} (the teacher: "
                   f"{base['4']['dfd']:.3f} at 4 NFE, {t50:.3f} at 50)")
    out.append("")
    return out


DISTRIBUTION = Family(
    name="distribution",
    title="Distribution-matching distillation",
    script=__file__,
    methods=("dmd", "dmd2", "dmd2@4", "decoupled-dmd", "flash-dmd", "vsd", "sim", "uni-instruct", "disback", "tdm@4",
             "mmd-ddm@4", "msd"),
    train={"betas": (0.0, 0.999)},
    options={"flash-dmd": {"reward_weight": 0.02}},
    extras=_reward,
    trainers={"msd": _train_msd},
    goals=_goals,
    intro=(
        "`uv run python benchmarks/distill_distribution.py --teacher T --methods ...` (see the script's docstring). "
        "Every method trains once under the same budget (iterations, batch 64, lr 5e-5, Adam betas (0, 0.999), "
        "EMA 0.999 of the student weights), initialised from the teacher; the fake score, where a method has one, "
        "is a teacher copy trained in the same optimiser step. One-step students unless the method is written "
        "METHOD@K. The student is sampled with its own rule at 1, 2 and 4 steps (n samples, class-balanced, "
        "seed 0). dFD: Fréchet distance of the shipped classifier's features to the real test split (lower is "
        "better). Flash-DMD's reward is the log-probability of the requested class under the *reward* classifier "
        "(weight 0.02: trained on the other half of the train split with another seed; the evaluation classifier "
        "is never a reward). MMD-DDM matches a fixed random projection "
        "of the pixels (the flattened image for digits), not the classifier's features. MSD: two students, five "
        "classes each, half the iterations each."
    ),
)

if __name__ == "__main__":
    main(DISTRIBUTION, __doc__)
