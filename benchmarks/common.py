"""Shared helpers for the benchmark scripts: markdown tables, machine description."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


UNIT = ("precision", "recall", "coverage", "accuracy")  # figures that live in [0, 1]


def seeds_row(runs: list[dict]) -> dict:
    """Every figure of S >= 2 evaluations (sampling or training seeds) as its mean with a t-interval
    (``intervals.over_seeds``), clipped to the figure's range."""
    from fewstep.core.intervals import over_seeds

    def bounds(k):
        return (-math.inf, math.inf) if k == "kid" else (0.0, 1.0) if k in UNIT else (0.0, math.inf)

    return {k: over_seeds([r[k] for r in runs], bounds=bounds(k)) for k in runs[0] if all(k in r for r in runs)}
