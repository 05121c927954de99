"""Structural pruning (EcoDiff, Zhang et al. 2024) of a shipped teacher: quality, size, cost, search memory.

    uv run python benchmarks/compression_prune.py --model digits-teacher [--quick]

``pruning_rows`` prunes the model at each ratio (the share of *prunable* parameters removed: ResBlock
inner channel groups, attention heads, DiT MLP groups) with a short mask search on the final sample
of a ``steps``-step DDIM trajectory, then samples the unpruned and every pruned model with the same
solver, grid, step count and noise. ``search_memory_rows`` measures the peak memory of the mask
search with and without time-step gradient checkpointing. Prints a markdown table; compression.py
calls the two functions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, table

from fewstep.core.prune import (
    PruneConfig,
    SavedTensorBytes,
    apply_plan,
    discover_units,
    flops,
    param_count,
    plan_from_scores,
    prunable_params,
    prune,
    random_scores,
)
from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
from fewstep.image.registry import load_model

SEARCH_BATCH = 4  # trajectories per mask-search step: the search's cost is iters x batch x steps NFE (x ~4)


def _quality(den, steps: int, n: int, solver: str, seed: int) -> dict:
    r = evaluate_denoiser(den, EvalConfig(solver=solver, num_steps=steps, n=n, seed=seed))
    return {"dfd": r["dfd"], "accuracy": r["accuracy"], "ms_per_sample": 1e3 * r["seconds_per_sample"]}


def pruning_rows(
    model_name: str,
    ratios=(0.1, 0.2, 0.3),
    steps: int = 20,
    n: int = 500,
    iters: int = 80,
    device: str = "cpu",
    solver: str = "ddim",
    batch: int = SEARCH_BATCH,
    seed: int = 0,
    random_baseline: bool = True,
) -> list[dict]:
    """One row for the unpruned model and one per ratio: dFD / accuracy at ``steps`` steps (same
    solver, grid and noise for every row), parameters, GFLOPs per net evaluation (batch 1), ms per
    sample (batches of 500), and the mask search's wall time. With ``random_baseline``, each ratio
    also gets a row pruned by random unit scores at the same share ("masks": "random")."""
    den = load_model(model_name, device=device)
    base = {"model": model_name, "steps": steps, "solver": solver, "n": n, "device": device}
    rows = [{**base, "ratio": 0.0, "masks": "-", **_quality(den, steps, n, solver, seed), "params": param_count(den),
             "gflops": flops(den) / 1e9, "search_s": 0.0, "iters": 0, "removed_share": 0.0}]
    units = discover_units(den.net)
    for r in ratios:
        cfg = PruneConfig(ratio=r, num_steps=steps, iters=iters, batch=batch, seed=seed, progress=False)
        pruned = prune(den, cfg)
        info = pruned.card.provenance["prune"]
        rows.append({
            **base,
            "ratio": r,
            "masks": "learned",
            **_quality(pruned, steps, n, solver, seed),
            "params": param_count(pruned),
            "gflops": flops(pruned) / 1e9,
            "search_s": info["search_seconds"],
            "iters": iters,
            "removed_share": info["removed_params"] / info["prunable_params"],
        })
        print(rows[-1], flush=True)
        if random_baseline:  # chance: the same share removed by random unit scores
            plan, removed = plan_from_scores(units, random_scores(units, seed), r)
            rnd = apply_plan(den, plan, ratio=r)
            rows.append({
                **base, "ratio": r, "masks": "random", **_quality(rnd, steps, n, solver, seed),
                "params": param_count(rnd), "gflops": flops(rnd) / 1e9, "search_s": 0.0, "iters": 0,
                "removed_share": removed / prunable_params(units),
            })
            print(rows[-1], flush=True)
    return rows


# -- search memory ----------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}; CPU search memory needs Linux")


def _memory_worker(model_name: str, steps: int, checkpoint: bool, iters: int, batch: int, device: str) -> dict:
    """Peak memory of ``iters`` mask-search steps, measured in this (fresh) process."""
    from fewstep.core.prune import discover_units, search_masks
    from fewstep.core.prune.masks import UnitMasks, attach_masks
    from fewstep.core.prune.search import draw, time_grid, trajectory_loss

    den = load_model(model_name, device=device).eval()
    x_T, cond = draw(den, batch, torch.Generator().manual_seed(0), device)
    cfg = PruneConfig(ratio=0.2, num_steps=steps, iters=iters, batch=batch, checkpoint=checkpoint, progress=False)
    # Warm up on a 1-step search: lazy imports (checkpointing pulls in torch._dynamo) and allocator
    # pools would otherwise count as search memory.
    search_masks(den, PruneConfig(ratio=0.2, num_steps=1, iters=1, batch=1, checkpoint=checkpoint, progress=False))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        search_masks(den, cfg)
        torch.cuda.synchronize()
        peak, measure = torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated - allocated before"
    else:
        # Peak RSS of this process (VmHWM), reset to the current RSS just before the search. Not
        # ru_maxrss: Linux carries it across fork + exec, so a child starts at its parent's peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_bytes("VmRSS")
        search_masks(den, cfg)
        peak, measure = _proc_status_bytes("VmHWM") - before, "peak RSS (VmHWM) - RSS before, fresh subprocess"
    # Saved-tensor bytes of one masked trajectory (what autograd keeps for backward).
    units = discover_units(den.net)
    masks = UnitMasks(units).to(device)
    den.net.requires_grad_(False)
    hooks = attach_masks(den.net, units)
    with SavedTensorBytes(ignore=den.net.parameters()) as meter:
        trajectory_loss(den, hooks, masks.gates(), x_T, time_grid(den, steps), cond, None, checkpoint)
    kept_inputs = steps * x_T.nbytes if checkpoint else 0  # each checkpointed step keeps its x_t
    hooks.remove()
    return {"peak_bytes": peak, "memory_measure": measure, "saved_tensor_bytes": meter.bytes + kept_inputs}


def search_memory_rows(model_name: str, steps: int = 50, device: str = "cpu", iters: int = 2,
                       batch: int = SEARCH_BATCH) -> list[dict]:
    """Peak memory of the mask search (``iters`` steps, ``batch`` trajectories of ``steps`` steps)
    without and with time-step gradient checkpointing, each in a fresh subprocess."""
    rows = []
    for ckpt in (False, True):
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--memory-worker", "--model", model_name, "--steps", str(steps),
               "--iters", str(iters), "--batch", str(batch), "--device", device] + (["--checkpoint"] if ckpt else [])
        # A fixed mmap threshold stops glibc from keeping freed tensor memory in the heap, so RSS
        # follows live memory more closely.
        env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"memory worker failed:\n{out.stderr[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({
            "model": model_name, "steps": steps, "batch": batch, "iters": iters, "checkpoint": ckpt,
            "peak_mb": res["peak_bytes"] / 2**20, "saved_tensor_mb": res["saved_tensor_bytes"] / 2**20,
            "memory_measure": res["memory_measure"], "seconds": time.perf_counter() - t0, "device": device,
        })
        print(rows[-1], flush=True)
    return rows


# -- CLI -----------------------------------------------------------------------------------------------


def markdown(prune_rows: list[dict], memory_rows: list[dict], notes: str) -> str:
    p = [[r["ratio"], r["masks"], r["dfd"], r["accuracy"], r["params"], r["gflops"], f"{r['ms_per_sample']:.2f}",
          f"{r['search_s']:.0f}", r["iters"]] for r in prune_rows]
    m = [["yes" if r["checkpoint"] else "no", r["steps"], r["batch"], f"{r['peak_mb']:.1f}",
          f"{r['saved_tensor_mb']:.1f}", r["memory_measure"]] for r in memory_rows]
    return "\n".join([
        f"# Pruning (EcoDiff) on {prune_rows[0]['model']}", "", notes, "",
        table(["ratio", "masks", "dFD", "accuracy", "params", "GFLOPs/eval", "ms/sample", "search s", "iters"], p), "",
        "## Mask-search memory", "",
        table(["time-step checkpointing", "steps", "batch", "peak MB", "saved tensors MB", "measure"], m), "",
    ])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits-teacher")
    p.add_argument("--quick", action="store_true", help="n=200, 20 search iterations")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--iters", type=int, default=80)
    p.add_argument("--batch", type=int, default=SEARCH_BATCH)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--memory-steps", type=int, default=50)
    p.add_argument("--ratios", default="0.1,0.2,0.3")
    p.add_argument("--solver", default="ddim")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(_memory_worker(args.model, args.steps, args.checkpoint, args.iters, args.batch, args.device)))
        return
    if args.quick:
        args.n, args.iters = 200, 20
    t0 = time.perf_counter()
    ratios = tuple(float(r) for r in args.ratios.split(","))
    rows = pruning_rows(args.model, ratios, args.steps, args.n, args.iters, args.device, args.solver, args.batch)
    mem = search_memory_rows(args.model, args.memory_steps, args.device, iters=2, batch=args.batch)
    notes = (
        f"`uv run python benchmarks/compression_prune.py --model {args.model}{' --quick' if args.quick else ''}` on "
        f"{machine()}; total {time.perf_counter() - t0:.0f} s. Ratio: share of prunable parameters removed "
        f"(ResBlock inner GroupNorm groups, attention heads, DiT MLP groups; residual and skip widths stay). "
        f"Mask search budget: {args.iters} Adam steps x {args.batch} trajectories of {args.steps} DDIM steps "
        f"(time-step checkpointing on), no retraining; 'random' rows remove the same share by random unit "
        f"scores (chance). Quality: {args.n} class-balanced samples, seed 0, "
        f"{args.solver} {args.steps} steps on the log-SNR grid ending at t = 0, same noise for every row; dFD on "
        f"the shipped classifier's features (lower is better). GFLOPs per network evaluation at batch 1 "
        f"(FlopCounterMode: matmuls, convolutions, attention). Memory: 2 search iterations of {args.memory_steps}-step "
        f"trajectories in a fresh subprocess; peak = CUDA max_memory_allocated, or on CPU the peak RSS growth "
        f"(VmHWM, glibc mmap threshold fixed at 128 KiB; includes allocator and Python overhead); saved tensors = "
        f"what autograd keeps for backward in one masked trajectory (with checkpointing: each step's x_t)."
    )
    print(markdown(rows, mem, notes))


if __name__ == "__main__":
    main()
