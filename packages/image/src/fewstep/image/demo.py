"""The main job: sample the shipped teachers, measure them, and write a report with figures."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from fewstep.core.intervals import Metric
from fewstep.core.io import write_text_atomic

from .compression_report import compare_compression
from .evaluate import EvalConfig, evaluate_denoiser, generate
from .data import balanced_indices, load_dataset
from .quality import score_samples
from .registry import load_model, summary

DEFAULT_MODELS = ("digits-teacher", "shapes-teacher")
DEFAULT_NFE = (5, 10, 20, 50)
COMPARE_SOLVERS = ("ddim", "heun", "dpmpp_2m", "unipc")
COMPARE_NFE = (5, 9)  # odd counts so Heun (2 NFE per step, 1 into t = 0) fits exactly


def save_grid(x: torch.Tensor, path: Path, nrow: int) -> None:
    """Save images in [-1, 1] (N, C, H, W) as one PNG grid."""
    from PIL import Image

    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.zeros(c, rows * (h + 2), nrow * (w + 2), dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(path)


def plot_quality(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["nfe"], r["dfd"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*pts), marker="o", label=model)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel("dFD (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_solvers(name: str, nfes: tuple[int, ...], n: int, seed: int, log) -> list[str]:
    """A small table: a few solvers at a few equal NFEs, error to a fine solve and dFD."""
    from fewstep.core.solvers import sample

    den = load_model(name)
    dataset = den.card.provenance["dataset"]
    gen = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(n, *den.sample_shape, generator=gen)
    y = torch.arange(n) % den.num_classes
    ref = sample(den, noise, "dpmpp_2m", 200, cond=y, denoise_to_zero=True)
    from fewstep.core.metrics import paired_error

    lines = ["| solver | NFE | MSE to 200-step | dFD | accuracy |", "|---|---:|---|---|---|"]
    for k in nfes:
        for solver in COMPARE_SOLVERS:
            steps = (k + 1) // 2 if solver == "heun" else k
            den.reset_counters()
            x = sample(den, noise, solver, steps, cond=y, denoise_to_zero=True)
            err = paired_error(x.flatten(1), ref.flatten(1), seed=seed)
            m = score_samples(dataset, x.clamp(-1, 1), y, seed)
            lines.append(f"| {solver} | {den.nfe} | {err.format()} | {m['dfd'].format()} | {m['accuracy'].format()} |")
            log(f"{name:16s} {solver:9s} NFE {den.nfe:2d}: MSE {err.format()}  dFD {m['dfd'].format()}")
    return lines


def shipped_students() -> list[str]:
    """Shipped distilled students (a card with a step count), e.g. digits-traj-1step."""
    from fewstep.core.io import read_card

    from .registry import resolve, shipped_names

    cards = {m: read_card(resolve(m)) for m in shipped_names()}
    return [m for m, card in cards.items() if card.get("kind") == "denoiser" and card.get("steps")]


def compare_students(n: int, seed: int, log) -> list[str]:
    """Each shipped student with its own sampling rule beside its teacher at the same NFE and at 50."""
    from fewstep.core.intervals import compare

    lines = [
        "| model | method | sampler | NFE | dFD | accuracy | recall | ms / sample | teacher dFD, same NFE (dpmpp_2m) | student vs teacher |",
        "|---|---|---|---:|---|---|---|---:|---|---|",
    ]
    for name in shipped_students():
        den = load_model(name)
        r = evaluate_denoiser(den, EvalConfig(n=n, seed=seed))
        teacher = load_model(den.card.provenance.get("teacher") or f"{den.card.provenance['dataset']}-teacher")
        t = evaluate_denoiser(teacher, EvalConfig(solver="dpmpp_2m", num_steps=den.card.student_steps, n=n, seed=seed))
        rm, tm = ({k: Metric.from_dict(v) for k, v in d["metrics"].items()} for d in (r, t))
        log(f"{name:20s} {r['solver']} {r['steps']} steps: dFD {rm['dfd'].format()} (teacher at the same NFE {tm['dfd'].format()})")
        lines.append(
            f"| {name} | {den.card.provenance.get('distilled_by', '?')} | {r['solver']} | {r['nfe']:.0f} | {rm['dfd'].format()} | "
            f"{rm['accuracy'].format()} | {rm['recall'].format()} | {r['seconds_per_sample'] * 1e3:.2f} | {tm['dfd'].format()} | "
            f"{compare(rm['dfd'], tm['dfd'])} |"
        )
    return lines if len(lines) > 2 else ["No distilled students are shipped in this install."]


def run_demo(
    out: str | os.PathLike = "demo-out",
    models: tuple[str, ...] = DEFAULT_MODELS,
    nfe: tuple[int, ...] = DEFAULT_NFE,
    n: int = 400,
    solver: str = "dpmpp_2m",
    seed: int = 0,
    log=print,
    compression_steps: int = 20,
    prune_iters: int = 60,
) -> Path:
    """Sample every model at every NFE, measure dFD/accuracy/recall/time, write ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows, sections = [], []
    for name in models:
        den = load_model(name)
        dataset = den.card.provenance["dataset"]
        xr, yr = load_dataset(dataset, "train")
        idx = balanced_indices(yr, n, den.num_classes, seed)
        floor = score_samples(dataset, xr[idx], yr[idx], seed)  # class-balanced real images, the same n
        for k in nfe:
            cfg = EvalConfig(solver=solver, num_steps=k, n=n, seed=seed)
            x, y, used_nfe, sec = generate(den, cfg)
            m = score_samples(dataset, x, y, seed)
            rows.append({"model": name, "solver": solver, "steps": k, "nfe": used_nfe, "seconds_per_sample": sec,
                         **{key: v.value for key, v in m.items()}, "metrics": {key: v.to_dict() for key, v in m.items()}})
            log(f"{name:16s} {solver} {k:3d} steps: dFD {m['dfd'].format()}  acc {m['accuracy'].value:.3f}  "
                f"recall {m['recall'].value:.3f}  {sec * 1e3:.2f} ms/sample")
        per_class = 10 if den.num_classes <= 10 else 8
        nrow = den.num_classes
        x_show, _, _, _ = generate(den, replace(cfg, n=per_class * nrow, batch_size=per_class * nrow))
        grid_name = f"{name}-samples.png"
        save_grid(x_show, out / grid_name, nrow=nrow)
        sections.append(
            f"### {name}\n{summary(name)}\n\nReal-data floor (class-balanced train images vs the test split, n={n}): dFD "
            f"{floor['dfd'].format()}, KID {floor['kid'].format()}, recall {floor['recall'].format()}, "
            f"coverage {floor['coverage'].format()}.\n\n"
            f"![{name} samples at {nfe[-1]} steps, one class per column]({grid_name})\n"
        )
    compare = compare_solvers(models[0], COMPARE_NFE, n, seed, log)
    compression = compare_compression(models[0], n, seed, log, compression_steps, prune_iters)
    students = compare_students(n, seed, log)
    plot_quality(rows, out / "quality_vs_nfe.png")
    write_text_atomic(out / "results.json", json.dumps(rows, indent=2))
    shown = ("dfd", "kid", "accuracy", "precision", "recall", "coverage")
    table = [
        "| model | solver | steps | NFE | " + " | ".join(shown) + " | ms / sample |",
        "|---|---|---:|---:|" + "---|" * len(shown) + "---:|",
    ] + [
        f"| {r['model']} | {r['solver']} | {r['steps']} | {r['nfe']:.0f} | "
        + " | ".join(Metric.from_dict(r["metrics"][k]).format() for k in shown) + f" | {r['seconds_per_sample'] * 1e3:.2f} |"
        for r in rows
    ]
    wall = time.perf_counter() - t_start
    report = [
        "# fewstep image demo",
        "",
        f"{n} class-balanced samples per row (a demo: the benchmarks use more), seed {seed}, on {torch.get_num_threads()} "
        f"CPU thread(s); total wall time {wall:.0f} s. Every figure has its 95% interval (bootstrap over the samples). "
        "dFD is the Fréchet distance between features of fewstep's shipped evaluation classifier on the samples and on the "
        "real test split, KID its unbiased kernel counterpart; accuracy is how often the classifier names the requested "
        "class; precision/recall are improved precision/recall (Kynkäänniemi et al. 2019), coverage Naeem et al. 2020's.",
        "",
        *table,
        "",
        "![quality vs NFE](quality_vs_nfe.png)",
        "",
        f"## Solvers at equal NFE ({models[0]})",
        "",
        "Same noise for every solver; MSE is the mean squared distance per pixel to a 200-step DPM-Solver++(2M) "
        "solution of that noise (95% interval over the samples). `benchmarks/solvers.py` runs the full comparison, diffusers' schedulers included.",
        "",
        *compare,
        "",
        f"## Compression ({models[0]}, DDIM {compression_steps} steps)",
        "",
        "Post-training quantization (`fewstep quantize`) and EcoDiff pruning (`fewstep prune`) of the same model, "
        "no retraining; same noise as the full-precision row. Weight MB counts every stored tensor. "
        "`benchmarks/compression.py` has the full comparison (torchao, every calibration, GPU speed).",
        "",
        *compression,
        "",
        "## Distilled students",
        "",
        "Few-step students distilled from the teachers (`fewstep-image distill`), each sampled with its own rule "
        "(`solver=\"auto\"`), beside the teacher at the same NFE. `benchmarks/distill_trajectory.py` compares every method.",
        "",
        *students,
        "",
        *sections,
    ]
    write_text_atomic(out / "report.md", "\n".join(report))
    log(f"wrote {out / 'report.md'} in {wall:.0f} s")
    return out / "report.md"
