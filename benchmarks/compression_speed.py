"""Speed of quantized execution on a DiT with random weights, fewstep next to torchao, one run.

Every variant is timed on the same inputs, compiled with torch.compile (eager bf16 is listed too),
as the median of CUDA-event-timed forwards (CPU: perf_counter) after warm-up. Writes JSON rows that
`benchmarks/compression.py` renders into docs/benchmarks/compression.md.

    python benchmarks/compression_speed.py --device cuda --out speed_gpu.json
    python benchmarks/compression_speed.py --device cpu --hidden 384 --depth 6 --batch 4 --out speed_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import traceback

import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.nets import DiT, DiTConfig
from fewstep.core.quant import QuantConfig, quantize, set_backend, weight_bytes
from fewstep.core.schedules import VPDiscrete


def random_dit(hidden: int, depth: int, heads: int, image: int, channels: int, device: str) -> Denoiser:
    cfg = DiTConfig(in_channels=channels, image_size=image, patch_size=2, hidden_size=hidden, depth=depth,
                    num_heads=heads, num_classes=1000)
    net = DiT(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():  # adaLN-Zero zeros would make every block the identity
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight.shape[1] ** -0.5)
    den = Denoiser(net, VPDiscrete(), "eps", sample_shape=(channels, image, image), num_classes=1000)
    return den.to(device).eval()


def machine_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def time_ms(fn, device: str, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torchao_variant(net: torch.nn.Module, name: str) -> torch.nn.Module:
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    configs = {
        "torchao int8 dynamic": lambda: Int8DynamicActivationInt8WeightConfig(),
        "torchao int8 weight-only": lambda: Int8WeightOnlyConfig(),
        "torchao fp8 per-row": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        "torchao int4 weight-only": lambda: Int4WeightOnlyConfig(group_size=128),
    }
    net = copy.deepcopy(net)
    quantize_(net, configs[name](), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
              and not fqn.startswith(("final.linear", "time_mlp")))
    return net


def run(args) -> list[dict]:
    device = args.device
    den = random_dit(args.hidden, args.depth, args.heads, args.image, args.channels, device)
    params = sum(p.numel() for p in den.net.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.channels, args.image, args.image, generator=g).to(device)
    t = torch.full((args.batch,), 500.0, device=device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.no_grad():
        ref = den.net.float()(x, t, y).float()
    base_name = "bf16" if device == "cuda" else "fp32"

    variants: list[tuple[str, callable]] = [(base_name, lambda: copy.deepcopy(den.net).to(dtype))]
    ours = [("fewstep w8a8 (int8, per-token)", QuantConfig(scheme="w8a8", act="token", tfmq=False, keep=())),
            ("fewstep w4a8 (int4, per-token)",
             QuantConfig(scheme="w4a8", act="token", tfmq=False, keep=(), group_size=0)),
            ("fewstep w8 (weight-only)", QuantConfig(scheme="w8", tfmq=False, keep=())),
            ("fewstep w4 (weight-only)", QuantConfig(scheme="w4", tfmq=False, keep=(), group_size=0))]
    if device == "cuda":
        ours.insert(0, ("fewstep fp8 (e4m3, per-token)", QuantConfig(scheme="fp8", tfmq=False, keep=())))
    for name, cfg in ours:
        variants.append((name, lambda cfg=cfg: quantize(den, cfg).net.to(dtype)))
    ao = ["torchao int8 dynamic", "torchao int8 weight-only"]
    if device == "cuda":
        ao += ["torchao fp8 per-row", "torchao int4 weight-only"]
    for name in ao:
        variants.append((name, lambda name=name: torchao_variant(copy.deepcopy(den.net).to(dtype), name)))

    if args.only:
        keep = [k.strip() for k in args.only.split(",")]
        variants = [v for v in variants if v[0] == base_name or any(k in v[0] for k in keep)]
    rows = []
    for name, build in variants:
        modes = [True] if args.compiled_only and args.compile else [False, True] if args.compile else [False]
        if name == base_name and args.compile:
            modes = [False, True]
        for compiled in modes:
            if compiled and name == base_name and device == "cpu" and not args.compile_cpu:
                continue
            row = {"variant": name, "compiled": compiled, "device": device, "params": params, "batch": args.batch,
                   "tokens": args.batch * (args.image // 2) ** 2}
            try:
                torch._dynamo.reset()
                net = build()
                if name.startswith("fewstep") and args.backend != "auto":
                    set_backend(net, args.backend)
                row["weight_bytes"] = weight_bytes(net) if name.startswith(("fewstep", base_name)) else None
                fn_net = torch.compile(net) if compiled else net
                xin = x.to(dtype)

                def fwd():
                    with torch.no_grad():
                        return fn_net(xin, t, y)

                out = fwd().float()
                row["rel_err"] = ((out - ref).norm() / ref.norm()).item()
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                row["ms"] = time_ms(fwd, device, args.reps)
                if device == "cuda":
                    row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
                net = fn_net = fwd = None  # free the variant before the next one builds
            except Exception as e:  # keep the other rows: report the failure in the table
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                traceback.print_exc()
            print(json.dumps(row), flush=True)
            rows.append(row)
            with open(args.out, "w") as f:  # after every row, so a cut-off run keeps what it measured
                json.dump({"args": vars(args), "machine": machine_name(device), "rows": rows}, f, indent=1)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--backend", default="auto")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-cpu", action="store_true")
    p.add_argument("--compiled-only", action="store_true", help="time only compiled variants (plus eager baseline)")
    p.add_argument("--only", default="", help="comma-separated substrings of the variants to run")
    p.add_argument("--out", default="compression_speed.json")
    args = p.parse_args()
    torch.manual_seed(0)
    run(args)


if __name__ == "__main__":
    main()
