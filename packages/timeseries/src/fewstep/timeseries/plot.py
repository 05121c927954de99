"""Forecast plots with quantile bands (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_forecasts(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], context: int, path: str | Path,
                   title: str = "") -> Path:
    """One row per panel ``(label, history (T,), samples (S, P), truth (P,) or None)``: the last
    ``context`` history values, the 10-90% and 25-75% bands, the median and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
    for ax, (label, history, samples, truth) in zip(axes[:, 0], panels):
        h = np.asarray(history)[-context:]
        p = samples.shape[1]
        th, tf = np.arange(len(h)), np.arange(len(h), len(h) + p)
        ax.plot(th, h, color="black", lw=1, label="history")
        q = np.quantile(samples, [0.1, 0.25, 0.5, 0.75, 0.9], axis=0)
        ax.fill_between(tf, q[0], q[4], color="tab:blue", alpha=0.2, label="10-90%")
        ax.fill_between(tf, q[1], q[3], color="tab:blue", alpha=0.35, label="25-75%")
        ax.plot(tf, q[2], color="tab:blue", lw=1.5, label="median")
        if truth is not None:
            ax.plot(tf, truth, color="black", lw=1, ls="--", label="truth")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
