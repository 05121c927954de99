"""Tasks for cross-modality experiments: a ``Task`` per modality setting, found by entry point.

``TASKS["digits"]`` is a registered task (``fewstep tasks`` lists them); ``run_experiment`` in
``fewstep.core.experiment`` runs any distillation objective on any of them. See docs/tasks.md.
"""

from ..intervals import LEVEL, VERDICTS, Metric, bootstrap, bootstrap_mean, bootstrap_ratio, compare
from .registry import GROUP, TASKS, discover, get_task, task_names
from .task import SPLITS, Budget, Rule, Samples, Task

__all__ = [
    "GROUP",
    "LEVEL",
    "SPLITS",
    "TASKS",
    "VERDICTS",
    "Budget",
    "Metric",
    "Rule",
    "Samples",
    "Task",
    "bootstrap",
    "bootstrap_mean",
    "bootstrap_ratio",
    "compare",
    "discover",
    "get_task",
    "task_names",
]
