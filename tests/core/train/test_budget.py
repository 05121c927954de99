"""TrainConfig.max_seconds: methods compared at equal wall-clock work, resumed runs included."""

import pytest
import torch

from fewstep.core.train import TrainConfig, train


class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return x @ self.w


def _loss(model, batch, gen):
    import time

    time.sleep(0.02)  # 20 ms of "work" per iteration
    return (model(batch[0]) - 1).pow(2)


def test_time_budget_ends_the_run_early_and_a_resume_does_not_extend_it(tmp_path):
    data = [torch.randn(64, 3)]
    cfg = TrainConfig(iterations=10_000, batch_size=8, lr=1e-2, warmup_iterations=0, max_seconds=0.3, progress=False)
    r = train(Slow(), _loss, data, cfg, tmp_path)
    assert r.budget_spent and 3 <= r.iteration < 10_000 and r.work_seconds >= 0.3
    again = train(Slow(), _loss, data, cfg, tmp_path)  # resumes: the budget is already spent
    assert again.iteration == r.iteration and again.budget_spent
    with pytest.raises(ValueError, match="constant"):
        TrainConfig(iterations=10, max_seconds=1.0, lr_schedule="cosine")
    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(iterations=10, max_seconds=0.0)
