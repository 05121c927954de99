"""Distillation under the evaluation protocol (issue 17): every trajectory and distribution method
on a shipped image teacher, one wall-clock budget, training and sampling seeds, reference rows.

    uv run python benchmarks/distill_protocol.py run --task digits --methods all --budget 180 --jobs 2 [--recalibrate]
    uv run python benchmarks/distill_protocol.py run --task digits --methods dmd2,reflow --seeds 0,1,2 --budget 180
    uv run python benchmarks/distill_protocol.py reeval --task digits    # score saved students again
    uv run python benchmarks/distill_protocol.py render

Budget. Every method gets the same seconds of training work (``--budget``, one CPU thread each).
Objectives schedule over their total iterations (progressive distillation's rounds, consistency
methods' step ramps), so a bare time limit would cut their schedules short: the script first
times a short probe of each method (``PROBE`` iterations), sets its iterations to
``budget / seconds-per-iteration`` and trains with ``TrainConfig.max_seconds`` set a little above
the budget as a guard. Later runs of a method take its cost from its finished runs instead, and
``--recalibrate`` trains again the runs whose work missed the budget by more than 15% (a probe
misjudges methods whose iterations differ in cost, DMD2's five critic updates per generator
update). The table shows the iterations each run reached and the seconds it spent, and
the teacher sample evaluations each run spent (the trajectory methods' teacher trajectories are
generated once per task and shared; their cost is stated beside the table).

Evaluation (``fewstep.image.tasks``: the evaluation classifier's features, the real test split,
n class-balanced samples): each student at its trained step count under ``--sampling-seeds``
sampling seeds (mean with a t-interval over the seeds), and at 1, 2 and 4 steps under seed 0 (the
per-sample interval: for dFD a jackknife stratified by class, docs/benchmarks/fd_interval.md).
A method trained under several seeds gets a headline row: the mean over training seeds of each
seed's sampling-seed mean, with a t-interval over the training seeds.
Reference rows: the real-vs-real floor, the collapse row, the teacher at 50 steps and at its best
(docs/benchmarks/teachers.json, same protocol and n) and the teacher at 1, 2 and 4 steps under the
same sampling seeds as the students (run here). Verdicts (better / worse / not distinguishable at
95%) are against the teacher at the student's NFE and at 50 steps; a row whose recall is below
half the best teacher's is flagged collapsed. Trajectory students also report the paired error to
the teacher's 250-step DPM-Solver++ solution from the same noise. Flash-DMD's reward is the
separate reward classifier; no method sees the evaluation classifier.

Rows accumulate in docs/benchmarks/distill_protocol.json (checkpoints under runs/protocol/);
``render`` writes docs/benchmarks/distill_protocol.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DOCS, machine, seeds_row, table  # noqa: E402
from distill_distribution import DISTRIBUTION  # noqa: E402
from distill_trajectory import TRAJECTORY  # noqa: E402

DB = DOCS / "distill_protocol.json"
RUNS = Path(__file__).resolve().parent.parent / "runs" / "protocol"
FAMILIES = {"trajectory": TRAJECTORY, "distribution": DISTRIBUTION}
STEPS = (1, 2, 4)
PROBE, WARM = 15, 10  # the timing probe: (WARM + PROBE) - WARM iterations (DisBack needs >= 10 to backtrack)
GUARD = 1.15  # max_seconds = GUARD * budget: the iteration count should end the run, not the clock
COLLAPSE_RECALL = 0.5  # as fewstep.core.experiment: recall below this share of the best teacher's
SHOWN = ("dfd", "kid", "precision", "recall", "coverage", "accuracy", "class_fd")


def family_of(method: str):
    base = method.partition("@")[0]
    for name, fam in FAMILIES.items():
        if method in fam.methods or base in fam.methods:
            return name, fam
    raise SystemExit(f"unknown method {method!r}; known: {', '.join(all_methods())}")


def all_methods() -> list[str]:
    return [m for fam in FAMILIES.values() for m in fam.methods]


def steps_of(method: str) -> int:
    base, _, at = method.partition("@")
    return int(at) if at else family_of(method)[1].train_steps.get(base, 1)


# -- the db ----------------------------------------------------------------------------------------
def load(path: Path = DB) -> dict:
    db = json.loads(path.read_text()) if path.is_file() else {}
    for k in ("rows", "teacher", "probe", "trajectories"):
        db.setdefault(k, {})
    return db


def save(db: dict, path: Path = DB) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(db, indent=1) + "\n")
    tmp.replace(path)


def update(path: Path, fn) -> None:
    """Read-modify-write of the db (several processes write rows; each holds the lock briefly)."""
    import fcntl

    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = load(path)
        fn(db)
        save(db, path)


# -- training --------------------------------------------------------------------------------------
def _config(task, method: str, iterations: int, seed: int, max_seconds: float | None):
    from fewstep.core.distill import DistillConfig, make_objective
    from fewstep.core.distill.trajectories import TrajectoryConfig
    from fewstep.image.distill import BUDGET

    _, fam = family_of(method)
    base = method.partition("@")[0]
    objective = make_objective(base, **fam.options.get(base, {}))
    train = replace(BUDGET, **fam.train, iterations=iterations, seed=seed, progress=False, max_seconds=max_seconds,
                    lr=fam.lr.get(base, fam.base_lr or BUDGET.lr), warmup_iterations=min(BUDGET.warmup_iterations, iterations))
    cfg = DistillConfig(student_steps=steps_of(method), **fam.distill, train=train,
                        trajectories=task.trajectories() or TrajectoryConfig())
    return objective, cfg


def shared_trajectories(task, teacher, cfg, db_path: Path) -> Path:
    """The teacher's trajectories for ``task``, made once (their cost recorded in the db)."""
    from fewstep.core.distill.trajectories import cached_trajectories
    from fewstep.core.io import checkpoint_paths

    path = RUNS / task.name / "trajectories"
    if not checkpoint_paths(path)[0].is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        teacher.reset_counters()
        t0 = time.perf_counter()
        cached_trajectories(teacher, cfg.trajectories, path, progress=True)
        rec = {"seconds": round(time.perf_counter() - t0, 1), "teacher_sample_evals": int(teacher.sample_evals),
               "n": cfg.trajectories.n, "num_steps": cfg.trajectories.num_steps, "machine": machine()}
        update(db_path, lambda db: db["trajectories"].__setitem__(task.name, rec))
    return path


def _link_trajectories(task, teacher, cfg, work: Path, db_path: Path) -> None:
    from fewstep.core.io import checkpoint_paths

    src = shared_trajectories(task, teacher, cfg, db_path)
    work.mkdir(parents=True, exist_ok=True)
    for s, d in zip(checkpoint_paths(src), checkpoint_paths(work / "trajectories")):
        if not d.exists():
            d.symlink_to(s.resolve())


def train_one(task, teacher, method: str, iterations: int, seed: int, max_seconds: float | None, root: Path, db_path: Path,
              resume: bool = True):
    from fewstep.core.distill import distill
    from fewstep.image.data import load_dataset

    _, fam = family_of(method)
    base = method.partition("@")[0]
    objective, cfg = _config(task, method, iterations, seed, max_seconds)
    work = root / f"{method}-seed{seed}.work"
    if objective.data == "trajectory":
        _link_trajectories(task, teacher, cfg, work, db_path)
    data = load_dataset(task.dataset, "train") if objective.data == "real" else None
    extras = fam.extras(objective, task.dataset) if fam.extras else {}
    trainer = fam.trainers.get(base)
    kw = dict(data=data, work_dir=work, card={"teacher": task.teacher_name}, progress=False, **extras)
    if trainer is None:
        return objective, distill(teacher, objective, cfg, root / f"{method}-seed{seed}", resume=resume, **kw)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    return objective, trainer(teacher, objective, cfg, root / f"{method}-seed{seed}", **kw)


def seconds_per_iteration(task, teacher, method: str, db_path: Path) -> float:
    """A short probe's training work per iteration (cached in the db per task and method)."""
    key = f"{task.name}/{method}"
    db = load(db_path)
    if key in db["probe"]:
        return db["probe"][key]["seconds_per_iteration"]
    def work(iterations: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            _, res = train_one(task, teacher, method, iterations, 0, None, Path(tmp), db_path)
        prov = res.student.card.provenance if hasattr(res.student, "card") else {}
        return float(prov.get("work_seconds", res.seconds))

    # the difference of two probes: the first iterations' one-off costs (allocation, warm-up) cancel
    spi = max(work(WARM + PROBE) - work(WARM), 1e-3) / PROBE
    update(db_path, lambda d: d["probe"].__setitem__(key, {"seconds_per_iteration": spi, "iterations": PROBE, "machine": machine()}))
    return spi


def measured_seconds_per_iteration(db: dict, task: str, method: str) -> float | None:
    """Work seconds per iteration of this method's finished runs (better than the probe: whole
    runs, at the cost mix of a real schedule), None before its first run."""
    runs = [r for r in db["rows"].values() if r["task"] == task and r["method"] == method and r["iterations"] > 0]
    return sum(r["work_seconds"] for r in runs) / sum(r["iterations"] for r in runs) if runs else None


def off_budget(row: dict, budget: float) -> bool:
    """A run whose work missed the budget by more than 15% (the probe misjudged its cost)."""
    return row["budget"] != budget or not 0.85 * budget <= row["work_seconds"] <= GUARD * budget


# -- evaluation ------------------------------------------------------------------------------------
def _metrics(m: dict) -> dict:
    from fewstep.core.intervals import Metric

    return {k: Metric.from_dict(v) for k, v in m.items()}


def _dicts(m: dict) -> dict:
    return {k: v.to_dict() for k, v in m.items()}


def reference_samples(task, teacher, n: int):
    """The teacher's 250-step deterministic solution from seed 0's noise (cached per task and n)."""
    path = RUNS / task.name / f"reference-{n}.pt"
    from fewstep.core.tasks import Samples

    if path.is_file():
        d = torch.load(path)
        return Samples((d["x"], d["y"]), n, d["nfe"], d["seconds"], d["rule"])
    s = task.generate(teacher, task.reference_rule(), n, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": s.data[0], "y": s.data[1], "nfe": s.nfe, "seconds": s.seconds_per_sample, "rule": s.rule}, path)
    return s


def evaluate_student(task, teacher, student, k: int, n: int, seeds: int, trajectory: bool) -> dict:
    from fewstep.core.tasks import Rule

    at_k, out = [], {}
    for seed in range(seeds):
        s = task.generate(student, Rule("auto", k), n, seed)
        m = task.evaluate(s, seed)
        if seed == 0:
            nfe, ms = s.nfe, 1e3 * s.seconds_per_sample
            if trajectory:
                m["paired_error"] = task.paired(s, reference_samples(task, teacher, n), 0)
        at_k.append(_dicts(m))
    out["at_k"] = at_k
    out["nfe"], out["ms_per_sample"] = nfe, ms
    out["steps"] = {}
    for steps in STEPS:
        if steps == k:
            out["steps"][str(steps)] = at_k[0]
            continue
        out["steps"][str(steps)] = _dicts(task.evaluate(task.generate(student, Rule("auto", steps), n, 0), 0))
    return out


def teacher_rows(task, teacher, n: int, seeds: int) -> dict:
    out = {}
    for steps in STEPS:
        runs = [_dicts(task.evaluate(task.generate(teacher, task.rule_at(steps), n, seed), seed)) for seed in range(seeds)]
        out[str(steps)] = {"rule": f"dpmpp_2m, {steps} steps", "runs": runs}
        print(f"teacher {task.name} {steps} steps: dFD {sum(r['dfd']['value'] for r in runs) / seeds:.3f}", flush=True)
    return out


# -- the run ---------------------------------------------------------------------------------------
def run_method(args, method: str, seed: int, fresh: bool = False) -> None:
    from fewstep.core.tasks import get_task

    db_path = Path(args.db)
    task = get_task(args.task)
    teacher = task.teacher()
    spi = measured_seconds_per_iteration(load(db_path), task.name, method) or seconds_per_iteration(task, teacher, method, db_path)
    iterations = max(1, int(args.budget / spi))
    fam_name, _ = family_of(method)
    k = steps_of(method)
    root = RUNS / task.name / (args.run_name or db_path.stem)  # a run of the same name and settings resumes
    print(f"{method} seed {seed} on {task.name}: {spi:.3f} s/iteration -> {iterations} iterations in {args.budget:g} s", flush=True)
    objective, res = train_one(task, teacher, method, iterations, seed, GUARD * args.budget, root, db_path, resume=not fresh)
    teacher.eval()
    prov = res.student.card.provenance if hasattr(res.student, "card") else {}
    ev = evaluate_student(task, teacher, res.student, k, args.n, args.sampling_seeds, objective.data == "trajectory")
    row = {
        "task": task.name, "method": method, "family": fam_name, "trained_steps": k, "seed": seed, "budget": args.budget,
        "iterations_planned": iterations, "iterations": int(prov.get("iterations", iterations)),
        "work_seconds": float(prov.get("work_seconds", res.seconds)), "train_seconds": round(res.seconds, 1),
        "teacher_sample_evals": int(prov.get("teacher_sample_evals", 0)), "n": args.n,
        "options": objective.describe(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), **ev,
    }
    update(db_path, lambda db: db["rows"].__setitem__(f"{task.name}/{method}/seed{seed}", row))
    d = sum(r["dfd"]["value"] for r in ev["at_k"]) / len(ev["at_k"])
    print(f"{method} seed {seed}: {row['iterations']} iterations, {row['work_seconds']:.0f} s; dFD@{k} {d:.3f}", flush=True)


def run(args) -> None:
    from fewstep.core.tasks import get_task

    db_path = Path(args.db)
    task = get_task(args.task)
    methods = all_methods() if args.methods == "all" else [m for m in args.methods.split(",") if m]
    for m in methods:
        family_of(m)
    seeds = [int(s) for s in args.seeds.split(",")]
    teacher = task.teacher()
    if task.name not in load(db_path)["teacher"]:
        rows = teacher_rows(task, teacher, args.n, args.sampling_seeds)
        update(db_path, lambda db: db["teacher"].__setitem__(task.name, {"rows": rows, "n": args.n, "machine": machine()}))
    if "real" not in load(db_path)["teacher"][task.name]:
        real = real_rows(task, args.n)
        update(db_path, lambda db: db["teacher"][task.name].__setitem__("real", real))
    trajectory_methods = [m for m in methods if family_of(m)[0] == "trajectory"]
    if trajectory_methods:  # once, before the jobs that share them
        shared_trajectories(task, teacher, _config(task, trajectory_methods[0], 1, 0, None)[1], db_path)
        reference_samples(task, teacher, args.n)
    have = load(db_path)["rows"]

    def wanted(m: str, s: int) -> bool:
        row = have.get(f"{task.name}/{m}/seed{s}")
        return args.redo or row is None or (args.recalibrate and off_budget(row, args.budget))

    jobs = [(m, s) for s in seeds for m in methods if wanted(m, s)]
    redo = {(m, s) for m, s in jobs if args.redo or f"{task.name}/{m}/seed{s}" in have}
    if args.jobs <= 1:
        for m, s in jobs:
            run_method(args, m, s, fresh=(m, s) in redo)
        return
    logs = RUNS / task.name / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running: dict[tuple[str, int], subprocess.Popen] = {}
    while jobs or running:
        while jobs and len(running) < args.jobs:
            m, s = jobs.pop(0)
            cmd = [sys.executable, __file__, "run", "--task", task.name, "--methods", m, "--seeds", str(s), "--budget", str(args.budget),
                   "--n", str(args.n), "--sampling-seeds", str(args.sampling_seeds), "--db", str(db_path), "--jobs", "1",
                   *(["--run-name", args.run_name] if args.run_name else []), *(["--redo"] if (m, s) in redo else [])]
            running[(m, s)] = subprocess.Popen(cmd, stdout=open(logs / f"{m}-seed{s}.log", "w"), stderr=subprocess.STDOUT, env=env)
        time.sleep(2)
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                print(f"{key[0]} seed {key[1]}: {'done' if proc.returncode == 0 else f'failed (rc {proc.returncode}), see {logs}'}", flush=True)


def load_student(path: Path, method: str):
    if method.partition("@")[0] == "msd":
        from fewstep.core.distill.multi_student import load_router

        return load_router(path)
    from fewstep.core.checkpoints import load_denoiser

    return load_denoiser(path)


def reevaluate(args) -> None:
    """Score every saved student of ``--task`` again (after a change to the figures' intervals):
    the same checkpoints, seeds and n, new figures (``--teacher-rows``: the reference rows too)."""
    from fewstep.core.tasks import get_task

    db_path = Path(args.db)
    task = get_task(args.task)
    teacher = task.teacher()
    db = load(db_path)
    n = args.n
    only = set(args.methods.split(",")) if args.methods else None
    if args.teacher_rows:
        rows, real = teacher_rows(task, teacher, n, args.sampling_seeds), real_rows(task, n)
        update(db_path, lambda d: d["teacher"].__setitem__(task.name, {**d["teacher"].get(task.name, {}), "rows": rows, "real": real, "n": n}))
    for key, row in sorted(db["rows"].items()):
        if row["task"] != task.name or (only is not None and row["method"] not in only):
            continue
        path = RUNS / task.name / (args.run_name or db_path.stem) / f"{row['method']}-seed{row['seed']}"
        student = load_student(path, row["method"])
        ev = evaluate_student(task, teacher, student, row["trained_steps"], row["n"], len(row["at_k"]), "paired_error" in row["at_k"][0])
        update(db_path, lambda d, key=key, ev=ev: d["rows"][key].update(ev))
        print(f"{key}: dFD@K {sum(r['dfd']['value'] for r in ev['at_k']) / len(ev['at_k']):.3f}", flush=True)


def real_rows(task, n: int) -> dict:
    """The real-vs-real floor and the collapse row, scored here (no sampling: cheap)."""
    return {"floor": _dicts(task.evaluate(task.reference(n, 0), 0)), "collapse": _dicts(task.evaluate(task.collapse(n, 0), 0))}


# -- the page --------------------------------------------------------------------------------------
def _seeds(runs: list[dict]) -> dict:
    return seeds_row([_metrics(r) for r in runs]) if len(runs) > 1 else _metrics(runs[0])


def _fmt(m, k: str) -> str:
    return m[k].format() if k in m else "–"


def render(db_path: Path = DB) -> str:
    from fewstep.core.intervals import compare
    from fewstep.core.tasks import get_task

    db = load(db_path)
    teachers_json = json.loads((DOCS / "teachers.json").read_text())
    lines = [
        "# Distillation under the evaluation protocol",
        "",
        "Written by `benchmarks/distill_protocol.py` (its docstring is the protocol; the commands are listed per task). "
        "Every figure carries its 95% interval; every comparison is better / worse / not distinguishable at 95%. "
        "dFD: Fréchet distance in the evaluation classifier's features to the real test split (lower is better; "
        "biased upwards at finite n, so compare rows at the same n only). The evaluation classifier is never given to a "
        "method (Flash-DMD's reward is the separate reward classifier).",
        "",
    ]
    for task_name in sorted({r["task"] for r in db["rows"].values()}):
        task = get_task(task_name)
        rows = {k: r for k, r in db["rows"].items() if r["task"] == task_name}
        n = next(iter(rows.values()))["n"]
        tj = teachers_json[task_name]
        t50 = _metrics(tj["teacher, 50 steps x 5 seeds"]["metrics"])
        best_key = next(k for k in tj if k.startswith("teacher at its best"))
        best = _metrics(tj[best_key]["metrics"])
        trows = db["teacher"][task_name]["rows"]
        tk = {int(s): _seeds(v["runs"]) for s, v in trows.items()}
        s_seeds = len(next(iter(trows.values()))["runs"])
        budget = sorted({r["budget"] for r in rows.values()})
        mach = sorted({r["machine"] for r in rows.values()})
        lines += [f"## {task_name}", "", task.description + ".", "",
                  f"n = {n} class-balanced samples per row; training budget {', '.join(f'{b:g}' for b in budget)} s of work per run "
                  f"on {'; '.join(mach)}, one process per core. Commands: `uv run python benchmarks/distill_protocol.py run --task "
                  f"{task_name} --methods all --budget {budget[0]:g} --jobs 2` (training seed 0), then the headline methods with "
                  "`--seeds 1,2`.", ""]
        if task_name in db["trajectories"]:
            t = db["trajectories"][task_name]
            lines += [f"Trajectory methods share the teacher's trajectories ({t['n']} x {t['num_steps']} DPM-Solver++ steps): "
                      f"{t['teacher_sample_evals']} teacher sample evaluations and {t['seconds']:.0f} s, spent once, outside "
                      "each method's budget.", ""]
        real = db["teacher"][task_name].get("real") or {"floor": tj["real data (floor)"]["metrics"],
                                                         "collapse": tj["collapse (one image per class)"]["metrics"]}
        ref = [["real data (floor)", *(_fmt(_metrics(real["floor"]), k) for k in SHOWN), "–"],
               ["collapse (one image per class)", *(_fmt(_metrics(real["collapse"]), k) for k in SHOWN), "–"],
               [f"teacher at its best ({tj[best_key]['rule']}, {best_key.split(' x ')[-1]})", *(_fmt(best, k) for k in SHOWN),
                compare(best["dfd"], t50["dfd"])],
               ["teacher, 50 steps (5 seeds)", *(_fmt(t50, k) for k in SHOWN), "–"]]
        for s, m in tk.items():
            ref.append([f"teacher, {s} step{'s' * (s != 1)} ({s_seeds} seeds)", *(_fmt(m, k) for k in SHOWN), compare(m["dfd"], t50["dfd"])])
        ref_n = tj["real data (floor)"]["metrics"]["dfd"]["n"]
        same = "same protocol and n" if ref_n == n else f"**n = {ref_n} there, not {n}: dFD is not comparable across n**"
        lines += [f"Reference rows (best and 50 steps from docs/benchmarks/teachers.json, {same}; the others scored here):", "",
                  table(["row", *SHOWN, "dFD vs 50 steps"], ref), ""]
        recall_ref = max(best["recall"].value, t50["recall"].value)

        def flag(m):
            return " **collapsed**" if m["recall"].value < COLLAPSE_RECALL * recall_ref else ""

        seed0 = sorted((r for r in rows.values() if r["seed"] == 0), key=lambda r: (r["family"], r["method"]))
        body = []
        for r in seed0:
            m = _seeds(r["at_k"])
            k = r["trained_steps"]
            pe = _metrics(r["at_k"][0]).get("paired_error")
            at = [_metrics(r["steps"][str(s)])["dfd"].format() for s in STEPS]
            body.append([r["method"] + flag(m), r["family"], k, r["iterations"], f"{r['work_seconds']:.0f}", r["teacher_sample_evals"],
                         *(_fmt(m, x) for x in ("dfd", "recall", "precision", "coverage", "accuracy", "class_fd")),
                         pe.format(4) if pe else "–", *at, compare(m["dfd"], tk[k]["dfd"]) if k in tk else "–", compare(m["dfd"], t50["dfd"])])
        lines += [f"Every method, training seed 0: figures at the trained K under {len(seed0[0]['at_k']) if seed0 else 0} sampling seeds "
                  "(t-interval over seeds); dFD at 1 / 2 / 4 steps under seed 0 (the per-sample interval: a jackknife stratified by class); paired error: per-pixel MSE to the "
                  "teacher's 250-step solution from the same noise (trajectory methods).", "",
                  table(["method", "family", "K", "iters", "work s", "teacher evals", "dFD@K", "recall@K", "precision@K", "coverage@K",
                         "accuracy@K", "class_fd@K", "paired error@K", "dFD@1", "dFD@2", "dFD@4", "vs teacher@K", "vs teacher 50"], body), ""]
        head = {}
        for r in rows.values():
            head.setdefault(r["method"], []).append(r)
        head = {m: rs for m, rs in head.items() if len(rs) >= 3}
        if head:
            hb = []
            for method, rs in sorted(head.items()):
                per_seed = [_seeds(r["at_k"]) for r in rs]
                m = seeds_row(per_seed)
                k = rs[0]["trained_steps"]
                ratio = m["recall"].value / t50["recall"].value
                hb.append([method + flag(m), k, len(rs), len(rs[0]["at_k"]), *(_fmt(m, x) for x in ("dfd", "recall", "precision", "coverage", "class_fd")),
                           f"{ratio:.2f}", compare(m["dfd"], tk[k]["dfd"]) if k in tk else "–", compare(m["dfd"], t50["dfd"]),
                           compare(m["dfd"], best["dfd"]), compare(m["class_fd"], t50["class_fd"]) if "class_fd" in m else "–",
                           f"{sum(r['iterations'] for r in rs) / len(rs):.0f}", f"{sum(r['work_seconds'] for r in rs) / len(rs):.0f}"])
            lines += ["Headline rows: the mean over training seeds of each seed's sampling-seed mean, with a t-interval over the "
                      "training seeds (the spread between training runs).", "",
                      table(["method", "K", "training seeds", "sampling seeds", "dFD", "recall", "precision", "coverage", "class_fd",
                             "recall / teacher 50", "dFD vs teacher@K", "dFD vs teacher 50", "dFD vs teacher best",
                             "class_fd vs teacher 50", "mean iters", "mean work s"], hb), ""]
    text = "\n".join(lines) + "\n"
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", default="digits", choices=["digits", "shapes", "photos"])
    r.add_argument("--methods", default="all", help="comma-separated (METHOD@K for a K-step student), or all")
    r.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    r.add_argument("--budget", type=float, default=240.0, help="seconds of training work per run")
    r.add_argument("--n", type=int, default=500)
    r.add_argument("--sampling-seeds", type=int, default=5)
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--run-name", default="")
    r.add_argument("--redo", action="store_true", help="train again rows the db already holds")
    r.add_argument("--recalibrate", action="store_true",
                   help="train again rows whose work missed the budget by more than 15%% (iterations from the measured runs)")
    r.add_argument("--db", default=str(DB))
    e = sub.add_parser("reeval", help="score the saved students of a task again (same checkpoints, seeds and n)")
    e.add_argument("--task", default="digits", choices=["digits", "shapes", "photos"])
    e.add_argument("--n", type=int, default=500)
    e.add_argument("--sampling-seeds", type=int, default=5)
    e.add_argument("--run-name", default="")
    e.add_argument("--methods", default="", help="only these methods' rows (comma-separated; default all)")
    e.add_argument("--teacher-rows", action="store_true", help="score the teacher, floor and collapse rows again too")
    e.add_argument("--db", default=str(DB))
    g = sub.add_parser("render")
    g.add_argument("--db", default=str(DB))
    a = p.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "reeval":
        reevaluate(a)
    text = render(Path(a.db))
    Path(a.db).with_suffix(".md").write_text(text)
    if a.cmd == "render":
        print(text)


if __name__ == "__main__":
    main()
