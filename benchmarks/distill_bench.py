"""Distillation benchmarks side by side: every method of a family on a shipped teacher, one budget.

The family scripts (distill_trajectory.py, distill_distribution.py) say which methods and how each
trains; this module trains each (its natural step count, the same iterations, batch and learning
rate, initialised from the teacher unless its objective says otherwise), samples the student with
its own rule at 1, 2 and 4 steps, and keeps one row per teacher and method in
docs/benchmarks/distill_<family>.json, rendered to the .md beside it. Runs go to runs/distill/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, table  # noqa: E402

RUNS = Path(__file__).resolve().parent.parent / "runs" / "distill"
EVAL_STEPS = (1, 2, 4)
TEACHER_SOLVERS = ("dpmpp_2m", "unipc", "ddim", "heun")


@dataclass(frozen=True)
class Family:
    """One benchmark: which methods, how each trains, where the rows go, how the page reads."""

    name: str  # "trajectory": docs/benchmarks/distill_<name>.{json,md}
    title: str
    script: str  # the script that runs this family (re-invoked per method with --jobs)
    methods: tuple[str, ...]
    intro: str
    train_steps: dict[str, int] = field(default_factory=dict)  # method -> K (default 1)
    lr: dict[str, float] = field(default_factory=dict)  # method -> learning rate (default base_lr)
    base_lr: float | None = None  # the family's learning rate (None: BUDGET's 5e-5)
    goals: Callable[[dict, list[dict]], list[str]] | None = None
    extras: Callable[[object, str], dict] | None = None  # (objective, teacher) -> extra distill() kwargs (a reward)
    options: dict[str, dict] = field(default_factory=dict)  # method -> default objective options (--option overrides)
    train: dict = field(default_factory=dict)  # TrainConfig fields every method of the family trains with
    distill: dict = field(default_factory=dict)  # DistillConfig fields (e.g. student_prediction)
    trainers: dict[str, Callable] = field(default_factory=dict)  # method -> distill()-like trainer returning .student etc.

    @property
    def json(self) -> Path:
        return DOCS / f"distill_{self.name}.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": {}, "teacher": {}}


def _save(db: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(db, indent=1))
    tmp.replace(path)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_parallel(fam: Family, args: argparse.Namespace, methods: list[str]) -> None:
    """Each method in its own process (``jobs`` at a time, one CPU thread each), rows merged into the db.

    Small students leave a GPU mostly idle, so several processes share it well; on a CPU give each
    job one core. A job that fails leaves its log beside the db and the others go on.
    """
    db_path = Path(args.db)
    logs = db_path.parent / (db_path.stem + ".logs")
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        pending, running, failed = list(methods), {}, []
        while pending or running:
            while pending and len(running) < args.jobs:
                m = pending.pop(0)
                cmd = [sys.executable, fam.script, "--teacher", args.teacher, "--methods", m, "--db", f"{tmp}/{m}.json", "--no-render",
                       "--run-name", args.run_name or db_path.stem,
                       "--n", str(args.n), "--iters", str(args.iters), "--batch", str(args.batch), *(["--lr", str(args.lr)] if args.lr else []), *sum((["--option", o] for o in args.option), [])]
                running[m] = subprocess.Popen(cmd, stdout=open(logs / f"{args.teacher}-{m}.log", "w"), stderr=subprocess.STDOUT, env=env)
            time.sleep(1)
            for m, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[m]
                if proc.returncode:
                    failed.append(m)
                    print(f"{m}: failed (rc {proc.returncode}), see {logs / f'{args.teacher}-{m}.log'}", flush=True)
                    continue
                db = _load(db_path)
                db["rows"].update(_load(Path(f"{tmp}/{m}.json"))["rows"])
                _save(db, db_path)
                print(f"{m}: done", flush=True)
    if failed:
        print(f"failed: {','.join(failed)}", flush=True)


def baseline(teacher: str, n: int) -> dict:
    """The teacher at 1, 2, 4 and 50 NFE with the best of several solvers (by dFD)."""
    from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
    from fewstep.image.registry import load_model

    den = load_model(f"{teacher}-teacher", device=_device())
    out = {}
    for nfe in (*EVAL_STEPS, 50):
        best = None
        for solver in TEACHER_SOLVERS:
            steps = max(1, nfe // 2) if solver == "heun" else nfe
            if solver == "heun" and nfe < 2:
                continue
            r = evaluate_denoiser(den, EvalConfig(solver=solver, num_steps=steps, n=n, grid="logsnr" if solver != "ddim" else "uniform"))
            print(f"teacher {teacher} {solver} {steps} steps: dFD {r['dfd']:.3f} (NFE {r['nfe']:.0f})", flush=True)
            if best is None or r["dfd"] < best["dfd"]:
                best = {**r, "nfe_budget": nfe}
        out[str(nfe)] = {k: best[k] for k in ("dfd", "accuracy", "recall", "precision", "nfe", "solver", "steps", "seconds_per_sample")}
    return out


def run_method(fam: Family, teacher: str, method: str, n: int, iters: int, batch: int, options: dict, runs: Path = RUNS,
               lr: float | None = None) -> dict:
    from fewstep.core.distill import DistillConfig, distill, make_objective
    from fewstep.image.data import load_dataset
    from fewstep.image.distill import BUDGET, TRAJECTORIES
    from fewstep.image.evaluate import EvalConfig, evaluate_denoiser
    from fewstep.image.registry import load_model

    den = load_model(f"{teacher}-teacher", device=_device())
    base, _, at = method.partition("@")  # "dmd2@4": dmd2 trained as a 4-step student
    objective = make_objective(base, **{**fam.options.get(base, {}), **options})
    k = int(at) if at else fam.train_steps.get(base, 1)
    cfg = DistillConfig(student_steps=k, **fam.distill, train=replace(BUDGET, **fam.train, iterations=iters, batch_size=batch, lr=lr or fam.lr.get(base, fam.base_lr or BUDGET.lr)), trajectories=TRAJECTORIES[teacher])
    data = load_dataset(teacher, "train") if objective.data == "real" else None
    extras = fam.extras(objective, teacher) if fam.extras else {}
    out = runs / teacher / method
    out.parent.mkdir(parents=True, exist_ok=True)
    train_fn = fam.trainers.get(base, distill)  # a method with its own trainer (MSD: K students and a router)
    res = train_fn(den, objective, cfg, out, data=data, work_dir=runs / teacher / f"{method}.work", card={"teacher": f"{teacher}-teacher"}, **extras)
    student = res.student
    rule = student.card.sampler.to_dict()
    evals = {}
    for steps in EVAL_STEPS:
        grid = objective.sampler(den, steps).grid
        grid_t = torch.tensor(grid, dtype=torch.float64) if isinstance(grid, tuple) else grid
        r = evaluate_denoiser(student, EvalConfig(num_steps=steps, grid=grid_t, n=n))
        evals[str(steps)] = {k2: r[k2] for k2 in ("dfd", "accuracy", "recall", "precision", "nfe", "seconds_per_sample")}
        print(f"{method} on {teacher}, {steps} steps: dFD {r['dfd']:.3f} acc {r['accuracy']:.3f} recall {r['recall']:.3f}", flush=True)
    params = sum(p.numel() for p in (student.net if hasattr(student, "net") else student).parameters())  # a router: all its students
    return {
        "method": method,
        "trained_steps": k,
        "iterations": iters,
        "batch_size": batch,
        "lr": cfg.train.lr,
        "train_seconds": round(res.seconds, 1),
        "peak_bytes": res.peak_bytes,
        "peak_kind": res.peak_kind,
        "params": params,
        "sampler": rule["solver"],
        "eval": evals,
        "options": objective.describe(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def render(fam: Family, db: dict) -> str:
    machines: dict[str, list[str]] = {}
    for key, r in sorted(db["rows"].items()):
        machines.setdefault(r.get("machine", "?"), []).append(key)
    gpu = any(m.startswith("GPU") for m in machines)
    lines = [
        f"# {db['title']}" if db.get("title") else f"# {fam.title}",
        "",
        *([db["note"], ""] if db.get("note") else []),
        fam.intro,
        "",
        "Training seconds were measured with several jobs sharing the machine (`--jobs`; on the GPU 14 processes "
        "at once), so they compare methods only roughly. "
        + ("Peak memory: the CUDA allocator's maximum for the training process (teacher, student, EMA, critics, "
           "optimiser state and one batch). " if gpu else "")
        + "Peak memory on CPU: bytes autograd saves for one training step at batch 8.",
        "",
        "Machines: " + "; ".join(f"{m} ({len(k)} rows)" for m, k in machines.items()) + ".",
        "",
    ]
    for teacher, base in db.get("teacher", {}).items():
        lines += [f"## {teacher}", "", f"Teacher ({base.get('machine', '')}), best solver per NFE:", ""]
        rows = [[nfe, r["solver"], r["steps"], r["dfd"], r["accuracy"], r["recall"]] for nfe, r in base["rows"].items()]
        lines += [table(["NFE", "solver", "steps", "dFD", "accuracy", "recall"], rows), ""]
        srows = []
        for key, r in sorted(db["rows"].items()):
            if not key.startswith(teacher + "/"):
                continue
            e = r["eval"]
            srows.append([r["method"], r["trained_steps"], e["1"]["dfd"], e["2"]["dfd"], e["4"]["dfd"], e["1"]["accuracy"],
                          e["1"]["recall"], f"{r['params'] / 1e6:.2f}M", r["iterations"], r["train_seconds"], f"{r['peak_bytes'] / 2**20:.1f}"])
        if srows:
            lines += ["Students (dFD at 1 / 2 / 4 steps with their own sampling rule):", ""]
            lines += [table(["method", "trained for K", "dFD 1", "dFD 2", "dFD 4", "acc@1", "recall@1", "params", "iters", "train s", "peak MB"], srows), ""]
            lines += (fam.goals or _goals)(base["rows"], [r for k, r in db["rows"].items() if k.startswith(teacher + "/")])
    return "\n".join(lines) + "\n"


def _goals(base: dict, rows: list[dict]) -> list[str]:
    if not rows or "50" not in base:
        return []
    t50 = base["50"]["dfd"]
    best1 = min(rows, key=lambda r: r["eval"]["1"]["dfd"])
    best4 = min(rows, key=lambda r: r["eval"]["4"]["dfd"])
    b1, b4 = best1["eval"]["1"]["dfd"], best4["eval"]["4"]["dfd"]
    beat = [r["method"] for r in rows if all(r["eval"][k]["dfd"] < base[k]["dfd"] for k in ("1", "2", "4") if k in base)]
    return [
        "Goals:",
        "",
        f"- best 1-step student within 1.2x of the teacher's 50-step dFD ({t50:.3f}): {best1['method']} at {b1:.3f} "
        f"({b1 / t50:.2f}x): **{'met' if b1 <= 1.2 * t50 else 'not met'}**",
        f"- best 4-step student at or below the teacher's 50-step dFD: {best4['method']} at {b4:.3f}: **{'met' if b4 <= t50 else 'not met'}**",
        f"- students better than the teacher at their own NFE (1, 2 and 4): {', '.join(beat) or 'none'} "
        f"({len(beat)} of {len(rows)})",
        "",
    ]


def main(fam: Family, doc: str = "") -> None:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--teacher", default="digits", choices=["digits", "shapes"])
    p.add_argument("--methods", default="")
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate for every method of this run (default: the family's)")
    p.add_argument("--option", action="append", default=[], help="method:key=value")
    p.add_argument("--render", action="store_true")
    p.add_argument("--no-render", action="store_true", help="do not rewrite the markdown")
    p.add_argument("--db", default=str(fam.json), help="the JSON the rows accumulate in (and the markdown is rendered from)")
    p.add_argument("--run-name", default="", help="runs/distill/NAME holds the checkpoints (default: the db's name)")
    p.add_argument("--jobs", type=int, default=1, help="methods trained at once, each in its own process")
    p.add_argument("--label", default="", help="the row's name instead of the method's (a probe: one method, changed options)")
    a = p.parse_args()
    db_path = Path(a.db)
    md = db_path.with_suffix(".md")
    names = list(fam.methods) if a.methods == "all" else [m for m in a.methods.split(",") if m]
    if a.baseline:
        db = _load(db_path)
        db["teacher"][a.teacher] = {"rows": baseline(a.teacher, a.n), "machine": machine()}
        _save(db, db_path)
    if a.label and len(names) != 1:
        p.error("--label names one row: give exactly one method")
    if a.jobs > 1 and len(names) > 1:
        run_parallel(fam, a, names)
        names = []
    for method in names:
        opts = {}
        for o in a.option:
            m, kv = o.split(":", 1)
            if m == method:
                from fewstep.image.distill import parse_options

                opts.update(parse_options([kv]))
        runs = RUNS / (a.run_name or db_path.stem)
        if a.label:  # a probe's checkpoints never overwrite the plain method's
            runs = runs / "".join(c if c.isalnum() or c in "-_@" else "_" for c in a.label)
        row = run_method(fam, a.teacher, method, a.n, a.iters, a.batch, opts, runs, a.lr)
        if a.label:
            row["method"] = a.label
        db = _load(db_path)  # other runs may have written meanwhile
        db["rows"][f"{a.teacher}/{a.label or method}"] = row
        _save(db, db_path)
    if not a.no_render:
        md.write_text(render(fam, _load(db_path)))
