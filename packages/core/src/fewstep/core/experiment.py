"""``run_experiment``: one distillation objective on one registered task, written up as one report.

It distils the task's teacher with the objective (``fewstep.core.distill``), samples the student
with its own rule and the reference rows every table needs so a reader sees the scale: the
teacher at the student's NFE, at 50 ODE steps and at its best sampler, the task's real-data floor
(class-balanced, same n) and a collapse row (one real sample per class, repeated). Every row is
scored with ``task.evaluate`` (each figure with its 95% interval) plus the task's distance to the
teacher's best samples and, for trajectory methods, the paired error to the teacher's many-step
ODE solution from the same noise. The student gets a verdict against each teacher row (better /
worse / not distinguishable at 95%), rows whose recall collapses are flagged, and the run writes
``out/report.md``, ``out/metrics.json``, ``out/samples.png`` (the task's picture) and
``out/metrics.png`` (figures with their intervals). No method is ever handed the task's
evaluation network (no reward is passed to ``distill``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .io import write_text_atomic
from .tasks import LEVEL, Metric, Samples, Task, compare, get_task

ROWS = ("student", "teacher_same_nfe", "teacher_50", "teacher_best", "real", "collapse")
VERSUS = ("teacher_same_nfe", "teacher_50", "teacher_best")  # rows the student gets a verdict against
COLLAPSE_RECALL = 0.5  # a row is flagged collapsed when its recall is below this share of the best teacher's


@dataclass(frozen=True)
class ExperimentConfig:
    """One run: ``method`` (a ``fewstep.core.distill`` objective) on ``task`` (a registered Task)."""

    task: str
    method: str
    student_steps: int = 1
    iterations: int | None = None  # training iterations; None: the task's budget
    n: int | None = None  # evaluation samples per row; None: the task's default_n
    seed: int = 0
    batch_size: int | None = None  # None: the task's budget
    progress: bool = True
    save_every: str = "2m"  # how often the student's run saves (checks.parse_save_every)
    restart: bool = False  # discard a saved run of the same kind instead of resuming it
    max_seconds: float | None = None  # a wall-clock training budget (TrainConfig.max_seconds); iterations is then a cap

    def __post_init__(self):
        from .distill import methods

        if self.method not in methods():
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(methods())}")
        if self.student_steps < 1:
            raise ValueError(f"student_steps={self.student_steps}: a student needs at least 1 sampling step")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations={self.iterations}: train for at least 1 iteration")
        if self.n is not None and self.n < 2:
            raise ValueError(f"n={self.n}: an interval needs at least 2 evaluation samples")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds={self.max_seconds} must be > 0 (None: no time budget)")
        from .checks import parse_save_every

        parse_save_every(self.save_every)
        task = get_task(self.task)  # a clear error for an unknown task, before any work
        if self.n is not None and self.n < task.min_n:
            raise ValueError(f"n={self.n}: task {task.name} needs at least {task.min_n} evaluation samples")


@dataclass(frozen=True)
class ExperimentResult:
    report: Path
    metrics_json: Path
    picture: Path
    plot: Path
    summary: dict  # what metrics.json holds


# -- the one place that builds train/distill configs --------------------------------------------
def _distill(task: Task, teacher, cfg: ExperimentConfig, out: Path):
    from .checks import parse_save_every
    from .distill import DistillConfig, distill, make_objective
    from .train import TrainConfig

    objective = make_objective(cfg.method)
    b = task.budget
    iterations = cfg.iterations or b.iterations
    train = TrainConfig(iterations=iterations, batch_size=cfg.batch_size or b.batch_size, lr=b.lr,
                        warmup_iterations=min(b.warmup_iterations, iterations), ema_decay=b.ema_decay,
                        seed=cfg.seed, progress=cfg.progress, max_seconds=cfg.max_seconds, **parse_save_every(cfg.save_every).fields())
    traj = task.trajectories()
    dcfg = DistillConfig(student_steps=cfg.student_steps, train=train, **({"trajectories": traj} if traj is not None else {}))
    data = task.distill_data(objective.data, cfg.seed)
    work = out / "work" / f"{cfg.method}-{cfg.student_steps}step-seed{cfg.seed}"  # resumes a run of the same kind
    res = distill(teacher, objective, dcfg, out / "student", data=data, work_dir=work,
                  card={"task": task.name}, progress=cfg.progress, resume=not cfg.restart)
    return objective, res, iterations, train.batch_size


# -- the run ---------------------------------------------------------------------------------------
def run_experiment(cfg: ExperimentConfig, out: str | os.PathLike, log=print) -> ExperimentResult:
    """Distil, sample, evaluate and write ``out/report.md`` + ``out/metrics.json`` + pictures."""
    task = get_task(cfg.task)
    n = cfg.n or task.default_n
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{cfg.method} on {task.name}: distilling a {cfg.student_steps}-step student")
    teacher = task.teacher()
    objective, res, iterations, batch = _distill(task, teacher, cfg, out)
    teacher.eval()  # the train loop left it in train mode (label dropout would corrupt its samples)
    bar = tqdm(total=len(ROWS) + 1, desc="evaluate", disable=not cfg.progress, leave=False)
    samples: dict[str, Samples] = {}
    metrics: dict[str, dict[str, Metric]] = {}

    def add(key: str, s: Samples | None) -> None:
        if s is not None:
            samples[key], metrics[key] = s, task.evaluate(s, cfg.seed)
        bar.update(1)

    add("student", task.generate(res.student, task.student_rule(cfg.student_steps), n, cfg.seed, cfg.progress))
    nfe = max(1, round(samples["student"].nfe))
    add("teacher_same_nfe", task.generate(teacher, task.rule_at(nfe), n, cfg.seed, cfg.progress))
    add("teacher_50", task.generate(teacher, task.rule_at(50), n, cfg.seed, cfg.progress))
    add("teacher_best", task.generate(teacher, task.best_rule(), n, cfg.seed, cfg.progress))
    add("real", task.reference(n, cfg.seed))
    add("collapse", task.collapse(n, cfg.seed))
    # FD to the teacher's own best samples, and a trajectory student's paired error to the
    # teacher's many-step ODE solution from the same noise (the same seed draws the same noise).
    for key, s in samples.items():
        d = task.distance(s, samples["teacher_best"], cfg.seed) if key != "teacher_best" else None
        if d is not None:
            metrics[key]["fd_to_teacher"] = d
    ref_rule = task.reference_rule()
    if objective.data == "trajectory" and ref_rule is not None:
        ref = task.generate(teacher, ref_rule, n, cfg.seed, cfg.progress)
        for key in ("student", "teacher_same_nfe", "teacher_50"):
            m = task.paired(samples[key], ref, cfg.seed)
            if m is not None:
                metrics[key]["paired_error"] = m
    bar.update(1)
    bar.close()

    labels = _labels(cfg, nfe, samples)
    student_metrics = metrics["student"]
    verdicts = {v: {k: compare(m, metrics[v][k]) for k, m in student_metrics.items() if k in metrics[v]} for v in VERSUS}
    collapsed = _collapsed(metrics)
    summary = {
        "task": task.name, "modality": task.modality, "method": cfg.method, "paper": getattr(objective, "paper", ""),
        "student_steps": cfg.student_steps, "iterations": iterations, "batch_size": batch, "n": n, "seed": cfg.seed,
        "level": LEVEL, "primary": task.primary, "train_seconds": round(res.seconds, 1),
        "iterations_done": int(res.student.card.provenance.get("iterations", iterations)),
        "max_seconds": cfg.max_seconds, "teacher_sample_evals": int(res.student.card.provenance.get("teacher_sample_evals", 0)),
        "rows": {k: {"label": labels[k], "rule": s.rule, "nfe": s.nfe, "seconds_per_sample": s.seconds_per_sample,
                     "n": s.n, "collapsed": k in collapsed,
                     "metrics": {m: v.to_dict() for m, v in metrics[k].items()}} for k, s in samples.items()},
        "verdicts": verdicts,
    }
    picture = task.picture({labels[k]: s for k, s in samples.items()}, out / "samples.png")
    plot = _plot(summary, out / "metrics.png")
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    report = write_text_atomic(out / "report.md", _report(task, summary, picture.name, plot.name))
    log(f"{cfg.method} {cfg.student_steps}-step student on {task.name}: {task.primary} "
        f"{metrics['student'][task.primary].format()} vs teacher at {nfe} NFE {metrics['teacher_same_nfe'][task.primary].format()} "
        f"({verdicts['teacher_same_nfe'][task.primary]}); wrote {report}")
    return ExperimentResult(report, out / "metrics.json", picture, plot, summary)


def _labels(cfg: ExperimentConfig, nfe: int, samples: dict[str, Samples]) -> dict[str, str]:
    best = samples["teacher_best"].rule
    return {
        "student": f"student ({cfg.method}, {cfg.student_steps} step{'s' * (cfg.student_steps > 1)})",
        "teacher_same_nfe": f"teacher at {nfe} NFE",
        "teacher_50": "teacher at 50 ODE steps",
        "teacher_best": f"teacher at its best ({best})",
        "real": "real data (floor)",
        "collapse": "collapse (one sample per class)",
    }


def _collapsed(metrics: dict[str, dict[str, Metric]]) -> set[str]:
    """Rows (the collapse reference aside) whose recall is under COLLAPSE_RECALL of the best teacher's."""
    best = metrics["teacher_best"].get("recall")
    if best is None:
        return set()
    return {k for k, m in metrics.items() if "recall" in m and m["recall"].value < COLLAPSE_RECALL * best.value}


# -- writing ---------------------------------------------------------------------------------------
def _arrow(m: dict) -> str:
    return "↑" if m["higher_is_better"] else "↓"


def _report(task: Task, s: dict, picture: str, plot: str) -> str:
    rows = s["rows"]
    names = list(dict.fromkeys(m for r in rows.values() for m in r["metrics"]))  # every metric, first seen first
    arrows = {m: _arrow(next(r["metrics"][m] for r in rows.values() if m in r["metrics"])) for m in names}
    head = "| row | sampler | NFE | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " | s / sample |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for r in rows.values():
        figs = " | ".join(Metric.from_dict(r["metrics"][m]).format() if m in r["metrics"] else "–" for m in names)
        nfe = f"{r['nfe']:.0f}" if r["nfe"] else "–"
        flag = " **(collapsed)**" if r.get("collapsed") else ""
        lines.append(f"| {r['label']}{flag} | {r['rule']} | {nfe} | {figs} | {r['seconds_per_sample'] * 1e3:.2f} ms |")
    verdict = ["| metric | " + " | ".join(f"student vs {rows[v]['label']}" for v in VERSUS) + " |", "|---" * (len(VERSUS) + 1) + "|"]
    verdict += [f"| {m} | " + " | ".join(s["verdicts"][v].get(m, "–") for v in VERSUS) + " |" for m in rows["student"]["metrics"]]
    p, st = s["primary"], rows["student"]["metrics"][s["primary"]]
    flagged = [r["label"] for k, r in rows.items() if r.get("collapsed") and k != "collapse"]
    return "\n".join([
        f"# {s['method']} on {task.name}: a {s['student_steps']}-step student", "",
        (f"Task **{task.name}** ({task.modality}): {task.description}. Sample shape {tuple(task.sample_shape)}, "
         f"conditioning: {task.conditioning}."),
        f"Method **{s['method']}**" + (f" ({s['paper']})" if s["paper"] else "") + f": {s['iterations_done']} training "
        f"iterations at batch {s['batch_size']}" + (f" (a {s['max_seconds']:g} s budget, cap {s['iterations']})" if s["max_seconds"] else "")
        + f", {s['train_seconds']:.0f} s, {s['teacher_sample_evals']:,} samples through the teacher's network; seed {s['seed']}.", "",
        (f"Each row is scored on n = {s['n']} samples; every figure is shown with its {s['level']:.0%} interval "
         "(standard-error bootstrap over the samples; KID: its U-statistic standard error). NFE is network "
         "evaluations per sample. Reference rows: the teacher at the student's NFE, at 50 ODE steps and at its "
         "best sampler, real data (the floor) and a collapse row (what recall near 0 looks like). "
         f"fd_to_teacher is the FD to the teacher's best samples. A row is flagged collapsed when its recall is "
         f"below {COLLAPSE_RECALL:.0%} of the best teacher's."), "",
        *lines, "",
        f"Headline: the student's {p} is {Metric.from_dict(st).format()}: "
        + "; ".join(f"{s['verdicts'][v][p]} than {rows[v]['label']}".replace("not distinguishable than", "not distinguishable from")
                    for v in VERSUS) + f" (at {s['level']:.0%})."
        + (f" Collapsed: {', '.join(flagged)}." if flagged else ""), "",
        f"Verdicts at {s['level']:.0%} (two-sided z-test on the difference of the bootstrap estimates):", "",
        *verdict, "",
        f"![samples]({picture})", "",
        f"Samples, top to bottom: {', '.join(r['label'] for r in rows.values())}.", "",
        f"![metrics]({plot})", "",
        "Reproduce: `fewstep experiment --task {} --method {} --student-steps {} --iterations {} --n {} --seed {} --out OUT`".format(
            task.name, s["method"], s["student_steps"], s["iterations"], s["n"], s["seed"]), "",
    ])


def _plot(s: dict, path: Path) -> Path:
    """One panel per metric: each row's value with its interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = s["rows"]
    names = list(dict.fromkeys(m for r in rows.values() for m in r["metrics"]))
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, names):
        keys = [k for k in rows if m in rows[k]["metrics"]]
        v = [rows[k]["metrics"][m] for k in keys]
        y = [d["value"] for d in v]
        err = [[d["value"] - d["low"] for d in v], [d["high"] - d["value"] for d in v]]
        ax.errorbar(range(len(keys)), y, yerr=err, fmt="o", capsize=4)
        ax.set_xticks(range(len(keys)), [rows[k]["label"] for k in keys], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m} {_arrow(v[0])}", fontsize=9)
    fig.suptitle(f"{s['method']} on {s['task']} ({s['level']:.0%} intervals, n = {s['n']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
