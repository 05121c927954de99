"""The demo's compression table: one teacher quantized (W8A8, W4A8, FP8) and pruned (EcoDiff, 20%),
sampled with the same noise and sampler as the original, with quality, weight size and time."""

from __future__ import annotations

import time
from dataclasses import replace

from fewstep.core.prune import PruneConfig, prune
from fewstep.core.quant import QuantConfig, quantize, weight_bytes

from .evaluate import EvalConfig, evaluate_denoiser
from .registry import load_model

VARIANTS = (
    ("full precision", None),
    ("W8A8 (int8, trajectory-calibrated)", QuantConfig(scheme="w8a8", calib_samples=16)),
    ("W4A8 (packed int4, groups of 32)", QuantConfig(scheme="w4a8", calib_samples=16)),
    ("FP8 e4m3 (dynamic per token)", QuantConfig(scheme="fp8")),
    ("EcoDiff pruned, 20% of prunable params", PruneConfig(ratio=0.2, iters=60, progress=False)),
)


def _with(config, steps: int, iters: int):
    if isinstance(config, PruneConfig):
        return replace(config, iters=iters, num_steps=steps)
    return config if config is None else replace(config, calib_steps=steps)


def compare_compression(name: str, n: int, seed: int, log, steps: int = 20, prune_iters: int = 60) -> list[str]:
    """Markdown rows: each compressed variant of ``name`` at ``steps`` DDIM steps."""
    den = load_model(name)
    cfg = EvalConfig(solver="ddim", num_steps=steps, n=n, seed=seed)
    lines = ["| variant | dFD | accuracy | weight MB | parameters | ms / sample | compress s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, config in VARIANTS:
        config = _with(config, steps, prune_iters)
        if isinstance(config, PruneConfig):
            label = f"{label} ({prune_iters} mask iterations)"
        t0 = time.perf_counter()
        model = den if config is None else quantize(den, config) if isinstance(config, QuantConfig) else \
            prune(den, config)
        prep = time.perf_counter() - t0
        r = evaluate_denoiser(model, cfg)
        params = "-" if isinstance(config, QuantConfig) else f"{sum(p.numel() for p in model.net.parameters()):,}"
        lines.append(f"| {label} | {r['dfd']:.3f} | {r['accuracy']:.3f} | {weight_bytes(model.net) / 1e6:.2f} | "
                     f"{params} | {r['seconds_per_sample'] * 1e3:.2f} | {prep:.0f} |")
        log(f"{name:16s} {label:40s} dFD {r['dfd']:.3f}  acc {r['accuracy']:.3f}  {weight_bytes(model.net) / 1e6:.2f} MB")
    return lines
