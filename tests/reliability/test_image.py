"""The reliability scenarios over ``fewstep-image``: training a teacher and distilling a student."""

import json

from fewstep.image.registry import load_model

from .harness import Writer, scenario_tests


def _teacher(out):
    den = load_model(out)
    assert den.card.provenance["iterations"] == 3 and den.sample_shape == (1, 16, 16)


def _student(out):
    den = load_model(out)
    assert den.card.student_steps == 1
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["train_iterations"] == 3


WRITERS = [
    Writer("train-teacher", lambda out: ["fewstep.image.cli", "train-teacher", "digits", "--iterations", "3", "--save-every", "1it",
                                         "--out", str(out)], _teacher,
           work=lambda out: out.with_name(out.name + ".work"), changed=("--seed", "5"), key="train.seed: 0 -> 5"),
    Writer("distill", lambda out: ["fewstep.image.cli", "distill", "cd", "--teacher", "digits", "--student-steps", "1", "--iterations", "3",
                                   "--batch-size", "8", "--eval-n", "20", "--save-every", "1it", "--out", str(out)], _student,
           work=lambda out: out.with_name(out.name + ".work"), changed=("--lr", "1e-4"), key="train.lr: 5e-05 -> 0.0001"),
]

globals().update(scenario_tests(WRITERS))
