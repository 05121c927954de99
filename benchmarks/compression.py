"""Compression side by side: fewstep quantization (every scheme and calibration), torchao, and
EcoDiff pruning on the shipped teachers; quantized-DiT speed on CPU and GPU.

    uv run python benchmarks/compression.py --section quality   # teachers: dFD at 20 steps, bytes, ms
    uv run python benchmarks/compression.py --section pruning   # digits teacher: 10/20/30 %, search memory
    uv run python benchmarks/compression.py --section speed-cpu # random-weight DiT on this CPU
    uv run python benchmarks/compression.py --render            # only rewrite the markdown

Each section stores its rows in docs/benchmarks/compression.json; GPU speed rows come from
`benchmarks/compression_speed.py --device cuda` runs saved as docs/benchmarks/compression_gpu*.json.
Writes docs/benchmarks/compression.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, table  # noqa: E402

JSON = DOCS / "compression.json"
VARIANT_ORDER = [
    "full precision (fp32)",
    "w8a8, trajectory calibration",
    "w8a8, PTQ4DM (NDTC) calibration",
    "w8a8, single-step calibration (last step)",
    "w8a8, trajectory, no TFMQ, no split",
    "w4a8, trajectory calibration",
    "w4a8 + AdaRound reconstruction",
    "w4a8 + BRECQ reconstruction",
    "w4a8, trajectory, groups of 32",
    "w8 weight-only",
    "w4 weight-only",
    "w4 weight-only, groups of 32",
    "fp8 (e4m3, dynamic)",
    "torchao int8 dynamic (Linear layers)",
    "torchao int8 weight-only (Linear layers)",
]


def quality_rows(model: str, n: int, steps: int, only: str = "") -> list[dict]:
    """Every scheme of ours and torchao's two int8 configs on one teacher, same noise and sampler."""
    import copy

    from fewstep.core.quant import QuantConfig, quantize, weight_bytes
    from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
    from fewstep.image.registry import load_model

    den = load_model(model)
    ev = EvalConfig(solver="ddim", num_steps=steps, n=n, seed=0, batch_size=250)
    variants = [
        ("full precision (fp32)", None),
        ("w8a8, trajectory calibration", QuantConfig(scheme="w8a8")),
        ("w8a8, PTQ4DM (NDTC) calibration", QuantConfig(scheme="w8a8", calibration="ptq4dm", calib_samples=128)),
        ("w8a8, single-step calibration (last step)", QuantConfig(scheme="w8a8", calibration="single",
                                                                  calib_samples=128)),
        ("w8a8, trajectory, no TFMQ, no split", QuantConfig(scheme="w8a8", tfmq=False, split_shortcut=False)),
        ("w4a8, trajectory calibration", QuantConfig(scheme="w4a8", group_size=0)),
        ("w4a8 + AdaRound reconstruction", QuantConfig(scheme="w4a8", group_size=0, reconstruction="adaround",
                                                       recon_iters=200)),
        ("w4a8 + BRECQ reconstruction", QuantConfig(scheme="w4a8", group_size=0, reconstruction="brecq",
                                                    recon_iters=200)),
        ("w4a8, trajectory, groups of 32", QuantConfig(scheme="w4a8", group_size=32)),
        ("w8 weight-only", QuantConfig(scheme="w8")),
        ("w4 weight-only", QuantConfig(scheme="w4", group_size=0)),
        ("w4 weight-only, groups of 32", QuantConfig(scheme="w4", group_size=32)),
        ("fp8 (e4m3, dynamic)", QuantConfig(scheme="fp8")),
        ("torchao int8 dynamic (Linear layers)", "torchao-int8-dynamic"),
        ("torchao int8 weight-only (Linear layers)", "torchao-int8-weight"),
    ]
    if only:
        keys = only.split(",")
        variants = [v for v in variants if v[1] is None or any(k in v[0] for k in keys)]
    rows = []
    for name, cfg in variants:
        t0 = time.perf_counter()
        if cfg is None:
            model_q = den
        elif isinstance(cfg, str):
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

            model_q = copy.deepcopy(den)
            ao = Int8DynamicActivationInt8WeightConfig() if cfg.endswith("dynamic") else Int8WeightOnlyConfig()
            quantize_(model_q.net, ao)
        else:
            try:
                model_q = quantize(den, cfg)
            except ImportError as e:  # e.g. reconstruction not available in this checkout
                print(f"skip {name}: {e}")
                continue
        prep = time.perf_counter() - t0
        r = evaluate_denoiser(model_q, ev)
        row = {"model": model, "variant": name, "dfd": r["dfd"], "accuracy": r["accuracy"], "recall": r["recall"],
               "ms_per_sample": r["seconds_per_sample"] * 1e3, "prep_s": prep,
               "weight_mb": weight_bytes(model_q.net) / 1e6 if not isinstance(cfg, str) else None,
               "n": n, "steps": steps}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def load_json() -> dict:
    return json.loads(JSON.read_text()) if JSON.is_file() else {}


def save_json(data: dict) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(data, indent=1))


def goals(data: dict) -> list[str]:
    """The issue's targets, each computed from the rows below it."""
    lines = ["## Goals, as measured", ""]
    q = (data.get("quality") or {}).get("rows", [])
    for model in dict.fromkeys(r["model"] for r in q):
        rows = {r["variant"]: r for r in q if r["model"] == model}
        fp = rows.get("full precision (fp32)")
        if not fp:
            continue
        for variant, limit in (("w8a8, trajectory calibration", 1.05), ("w4a8, trajectory calibration", 1.20),
                               ("w4a8, trajectory, groups of 32", 1.20), ("w4a8 + BRECQ reconstruction", 1.20)):
            r = rows.get(variant)
            if r:
                ratio = r["dfd"] / fp["dfd"]
                lines.append(f"- {model}, {variant}: dFD {r['dfd']:.3f} vs {fp['dfd']:.3f} full precision "
                             f"({ratio:.2f}x; goal <= {limit:.2f}x: {'met' if ratio <= limit else 'missed'}).")
    for run in data.get("speed_gpu") or []:
        rows = [r for r in run["rows"] if "error" not in r]
        base = next((r for r in rows if r["variant"] == "bf16" and r["compiled"]), None)
        quant = [r for r in rows if r["variant"] != "bf16" and r["compiled"]]
        if base and quant:
            best = min(quant, key=lambda r: r["ms"])
            lines.append(f"- GPU, {rows[0]['params'] / 1e6:.0f}M DiT: fastest quantized path {best['variant']} "
                         f"{best['ms']:.2f} ms vs compiled bf16 {base['ms']:.2f} ms ({base['ms'] / best['ms']:.2f}x; "
                         f"goal > 1x: {'met' if best['ms'] < base['ms'] else 'missed'}).")
    p = data.get("pruning")
    if p:
        fp = next(r for r in p["rows"] if r["ratio"] == 0)
        r20 = next((r for r in p["rows"] if r["ratio"] == 0.2 and r.get("masks") == "learned"), None)
        if r20:
            ratio = r20["dfd"] / fp["dfd"]
            lines.append(f"- 20% pruning (digits): dFD {r20['dfd']:.3f} vs {fp['dfd']:.3f} ({ratio:.2f}x; goal <= 1.10x: "
                         f"{'met' if ratio <= 1.10 else 'missed'}), no retraining.")
        m = {r["checkpoint"]: r for r in p.get("memory") or []}
        if True in m and False in m:
            cut = m[False]["peak_mb"] / m[True]["peak_mb"]
            lines.append(f"- Mask-search peak memory at {m[True]['steps']} steps: {m[False]['peak_mb']:.0f} MB -> "
                         f"{m[True]['peak_mb']:.0f} MB with time-step checkpointing ({cut:.1f}x; goal >= 5x: "
                         f"{'met' if cut >= 5 else 'missed'}).")
    return [*lines, ""]


def render() -> str:
    data = load_json()
    out = ["# Compression: quantization and pruning", "", *goals(data)]
    q = data.get("quality")
    if q:
        out += [
            "## Quantized teachers (quality)",
            "",
            f"`uv run python benchmarks/compression.py --section quality` on {q['machine']}: DDIM, {q['steps']} steps "
            f"(last step to x0), n={q['n']} class-balanced samples, the same noise for every row. dFD: Fréchet distance on "
            "the shipped classifier's features (lower is better). Weight MB: every stored tensor of the net. ms/sample: "
            "wall time of the whole sampling run over n (batches of 250). torchao's `quantize_` converts nn.Linear "
            "layers only, so on these U-Nets (mostly convolutions) it leaves most weights in fp32; its weight bytes "
            "are not comparable and are left blank. Calibration: 32 full-precision trajectories of 20 DDIM steps "
            "(128 trajectories for the one-step-per-trajectory calibrations). A dFD *below* the fp32 row is not a "
            "better model: 20 DDIM steps leave the shapes teacher far from its converged quality (docs/benchmarks/"
            "teachers.md), so perturbed samples can land closer to the data by chance; read recall beside it "
            "(per-channel W4A8 loses diversity on shapes: recall 0.75-0.88 vs 0.93; groups of 32 keep it). "
            "Rows without 'groups' use one weight scale per output channel; int4 defaults to groups of 32.",
            "",
        ]
        rows = []
        for r in q["rows"]:
            base = next(b for b in q["rows"] if b["model"] == r["model"])
            rows.append([r["model"], r["variant"], r["dfd"], f"{r['dfd'] / base['dfd']:.3f}", r["accuracy"],
                         r["recall"], "-" if r["weight_mb"] is None else f"{r['weight_mb']:.2f}",
                         f"{r['ms_per_sample']:.1f}", f"{r['prep_s']:.1f}"])
        out += [table(["model", "variant", "dFD", "dFD / fp32", "accuracy", "recall", "weight MB", "ms/sample",
                       "quantize s"], rows), ""]
    for key, title in (("speed_gpu", "GPU"), ("speed_cpu", "CPU")):
        runs = data.get(key) or []
        for run in runs:
            a = run["args"]
            out += [
                f"## Speed on the {title}: DiT with random weights ({run['rows'][0]['params'] / 1e6:.0f}M parameters)",
                "",
                f"{run['machine']}; `{run['command']}`. One forward of batch {a['batch']} at {a['image']}x{a['image']}x"
                f"{a['channels']} ({run['rows'][0]['tokens']} tokens); median of {a['reps']} timed forwards after "
                "warm-up. rel err: relative L2 distance of the output to the fp32 model's. "
                + run.get("note", ""),
                "",
            ]
            base = next((r for r in run["rows"] if r["variant"] in ("bf16", "fp32") and r["compiled"] == any(
                x["compiled"] for x in run["rows"] if x["variant"] not in ("bf16", "fp32"))), run["rows"][0])
            rows = []
            for r in run["rows"]:
                if "error" in r:
                    rows.append([r["variant"], "yes" if r["compiled"] else "no", "failed: " + r["error"][:80],
                                 "", "", "", ""])
                    continue
                rows.append([r["variant"], "yes" if r["compiled"] else "no", f"{r['ms']:.2f}",
                             f"{base['ms'] / r['ms']:.2f}x", f"{r['rel_err']:.3f}",
                             "-" if r.get("weight_bytes") is None else f"{r['weight_bytes'] / 1e6:.0f}",
                             "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"])
            out += [table(["variant", "compiled", "ms / forward", f"speed-up vs {base['variant']}"
                           f"{' compiled' if base['compiled'] else ''}", "rel err", "weight MB", "peak MB"], rows), ""]
    p = data.get("pruning")
    if p:
        out += [
            "## EcoDiff pruning (no retraining)",
            "",
            f"`uv run python benchmarks/compression.py --section pruning` on {p['machine']}. Masks trained on the final "
            f"sample of {p['rows'][0]['steps']}-step DDIM trajectories ({max(r.get('iters') or 0 for r in p['rows'])} iterations, batch 4), then "
            "thresholded and physically removed. ratio: share of the *prunable* parameters removed (ResBlock inner "
            "channel groups; the digits teacher's attention has one head). 'random' rows remove the same share with "
            "random masks. Sampled with the same solver, grid, steps and noise as the unpruned row.",
            "",
        ]
        rows = [[r["model"], r["ratio"], r.get("masks", "-"), r["dfd"], r["accuracy"], f"{r['params']:,}",
                 f"{r['gflops']:.4f}", f"{r['ms_per_sample']:.1f}", "-" if not r.get("search_s") else
                 f"{r['search_s']:.0f}"] for r in p["rows"]]
        out += [table(["model", "ratio", "masks", "dFD", "accuracy", "parameters", "GFLOPs / eval", "ms/sample",
                       "search s"], rows), ""]
        m = p.get("memory")
        if m:
            out += [
                f"Peak memory of the mask search at {m[0]['steps']} steps (batch {m[0]['batch']}; "
                f"{m[0]['memory_measure']}):",
                "",
                table(["time-step checkpointing", "peak MB", "saved tensors MB", "seconds"],
                      [["yes" if r["checkpoint"] else "no", f"{r['peak_mb']:.1f}", f"{r['saved_tensor_mb']:.1f}",
                        f"{r['seconds']:.1f}"] for r in m]),
                "",
            ]
    text = "\n".join(out)
    (DOCS / "compression.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--section", choices=["quality", "pruning", "speed-cpu"], action="append", default=[])
    p.add_argument("--models", default="digits-teacher,shapes-teacher")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--render", action="store_true")
    p.add_argument("--only", default="", help="quality: comma-separated substrings of the variants to (re)run")
    args = p.parse_args()
    data = load_json()
    if "quality" in args.section:
        for m in args.models.split(","):
            new = quality_rows(m, args.n, args.steps, args.only)
            old = (load_json().get("quality") or {}).get("rows", [])  # merge: other runs may have added rows
            done = {(r["model"], r["variant"]) for r in new}
            order = VARIANT_ORDER
            rows = [r for r in old if (r["model"], r["variant"]) not in done] + new
            rows.sort(key=lambda r: (r["model"], order.index(r["variant"]) if r["variant"] in order else 99))
            data = load_json()
            data["quality"] = {"machine": machine(), "n": args.n, "steps": args.steps, "rows": rows}
            save_json(data)
    if "pruning" in args.section:
        from compression_prune import pruning_rows, search_memory_rows

        rows = pruning_rows("digits-teacher", ratios=(0.1, 0.2, 0.3), steps=args.steps, n=args.n)
        memory = search_memory_rows("digits-teacher", steps=50)
        data["pruning"] = {"machine": machine(), "rows": rows, "memory": memory}
        save_json(data)
    if "speed-cpu" in args.section:
        import subprocess

        out = DOCS / "compression_cpu_speed.tmp.json"
        cmd = ["python", "benchmarks/compression_speed.py", "--device", "cpu", "--hidden", "384", "--depth", "6",
               "--heads", "6", "--batch", "8", "--reps", "10", "--no-compile", "--out", str(out)]
        subprocess.run(cmd, check=True)
        run = json.loads(out.read_text())
        out.unlink()
        run["command"] = "uv run " + " ".join(cmd[:-2])
        run["note"] = "Eager (torch.compile on this 2-core CPU takes minutes per variant)."
        data["speed_cpu"] = [run]
        save_json(data)
    print(render())


if __name__ == "__main__":
    main()
