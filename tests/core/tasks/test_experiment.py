"""One tiny experiment per registered task (2 iterations, the task's smallest n, CPU), and the CLI."""

import json

import pytest
from typer.testing import CliRunner

from fewstep.core.cli import app
from fewstep.core.experiment import ExperimentConfig, run_experiment
from fewstep.core.tasks import TASKS, Metric


def _check_run(out, summary, task):
    for name in ("report.md", "metrics.json", "samples.png", "metrics.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    rows = saved["rows"]
    assert saved["teacher_sample_evals"] > 0 and saved["iterations_done"] == saved["iterations"]  # the teacher's cost is counted
    assert {"student", "teacher_same_nfe", "teacher_50", "teacher_best"} <= set(rows)
    assert rows["student"]["nfe"] == rows["teacher_same_nfe"]["nfe"] == 1
    assert rows["teacher_50"]["nfe"] == 50 and rows["teacher_best"]["nfe"] > 1
    for row in rows.values():
        assert task.primary in row["metrics"]
        for name, m in row["metrics"].items():
            m = Metric.from_dict(m)  # validates low <= value <= high
            assert m.se >= 0 and (m.n == saved["n"] or name in ("recall", "coverage"))  # means over the real set
        assert row["metrics"][task.primary]["high"] > row["metrics"][task.primary]["low"]
    for versus in ("teacher_same_nfe", "teacher_50", "teacher_best"):
        assert saved["verdicts"][versus][task.primary] in ("better", "worse", "not distinguishable")
    report = (out / "report.md").read_text()
    assert "teacher at 1 NFE" in report and "teacher at its best" in report and "![samples](samples.png)" in report


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tiny_experiment_writes_report_metrics_and_pictures(name, tmp_path, one_thread):
    task = TASKS[name]
    cfg = ExperimentConfig(name, "pd", student_steps=1, iterations=2, n=task.min_n, batch_size=8, progress=False)
    res = run_experiment(cfg, tmp_path / name, log=lambda _: None)
    _check_run(tmp_path / name, res.summary, task)
    assert res.summary["iterations"] == 2 and res.summary["method"] == "pd"


def test_cli_lists_tasks_and_runs_an_experiment(tmp_path, one_thread):
    r = CliRunner().invoke(app, ["tasks"])
    assert r.exit_code == 0, r.output
    first = [line.split()[0] for line in r.output.strip().splitlines()]
    assert {"digits", "shapes", "seasonal"} <= set(first)
    out = tmp_path / "x"
    r = CliRunner().invoke(app, ["experiment", "--task", "digits", "--method", "cd", "--student-steps", "1",
                                 "--iterations", "2", "--n", "20", "--batch-size", "8", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout[r.stdout.index("{"):])
    assert printed["method"] == "cd" and printed["n"] == 20
    _check_run(out, printed, TASKS["digits"])


@pytest.mark.parametrize("args, message", [
    (["--task", "nope", "--method", "pd"], "unknown task 'nope'"),
    (["--task", "digits", "--method", "nope"], "unknown method 'nope'"),
    (["--task", "digits", "--method", "pd", "--student-steps", "0"], "'--student-steps': must be an integer >= 1"),
    (["--task", "digits", "--method", "pd", "--n", "1"], "'--n': must be an integer >= 2"),
])
def test_cli_bad_input_is_one_clear_line(args, message, tmp_path):
    r = CliRunner().invoke(app, ["experiment", *args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    if message.startswith("'--"):  # a bad number is a usage error: the usage line, then the message
        return
    assert r.output.strip().count("\n") == 0


def test_a_time_budget_stops_training_and_the_report_says_so(tmp_path, one_thread):
    cfg = ExperimentConfig("digits", "pd", student_steps=1, iterations=100_000, n=20, batch_size=8, progress=False,
                           max_seconds=1.0)
    res = run_experiment(cfg, tmp_path, log=lambda m: None)
    assert 1 <= res.summary["iterations_done"] < 100_000 and res.summary["max_seconds"] == 1.0
    assert "a 1 s budget" in res.report.read_text()
