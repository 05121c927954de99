"""Copy benchmark students into fewstep-image's shipped weights under their public names.

    uv run python benchmarks/ship_distilled.py digits-traj-1step=arcflow:1 digits-traj-4step=scott:4
    uv run python benchmarks/ship_distilled.py --runs runs/distill/distill_trajectory NAME=METHOD:K

NAME=METHOD:K takes <runs>/<dataset>/<METHOD> (written by distill_trajectory.py; --runs defaults to
runs/distill/distill_trajectory, the default benchmark's checkpoints), sets its
step count and sampling rule to K steps of its own rule, measures it (n=500) and saves it under
packages/image/src/fewstep/image/weights/NAME with the quality in its card.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "packages/image/src/fewstep/image/weights"


def ship(name: str, method: str, steps: int, runs: Path) -> None:
    from fewstep.core.checkpoints import load_denoiser, save_denoiser
    from fewstep.core.distill import make_objective
    from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
    from fewstep.image.registry import load_model

    dataset = name.split("-")[0]
    den = load_denoiser(runs / dataset / method)
    teacher = load_model(f"{dataset}-teacher")
    den.card = replace(den.card, student_steps=steps, sampler=make_objective(method).sampler(teacher, steps))
    q = evaluate_denoiser(den, EvalConfig(n=500))
    trained = den.card.provenance.get("student_steps")
    den.card = den.card.with_provenance(name=name, teacher=f"{dataset}-teacher", quality={k: q[k] for k in ("dfd", "accuracy", "recall", "nfe")},
                                        **({"note": f"trained as a {trained}-step {method} student; shipped sampling {steps} steps of its own rule"} if trained != steps else {}))
    state = {k: v.contiguous() for k, v in den.net.state_dict().items()}
    save_denoiser(den, WEIGHTS / name, state=state)
    print(f"{name}: {method} at {steps} steps, dFD {q['dfd']:.3f}, accuracy {q['accuracy']:.3f}, NFE {q['nfe']:.0f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    args, runs = sys.argv[1:], ROOT / "runs/distill/distill_trajectory"
    if args[:1] == ["--runs"]:
        runs, args = Path(args[1]), args[2:]
    for arg in args:
        name, spec = arg.split("=")
        method, k = spec.split(":")
        ship(name, method, int(k), runs)
