"""TSDiff trains with the core loop on gluonts windows: the loss falls, checkpoints resume."""

import torch
from fewstep.core.train import CKPT_NAME
from fewstep.timeseries import TrainSettings, TSDiffConfig, train_tsdiff, tsdiff_config


def test_core_train_loop_learns_and_resumes(tmp_path, seasonal):
    cfg = TSDiffConfig(freq="h", prediction_length=24, context_length=24, lags=(24,), hidden=16, layers=1, state=8)
    settings = TrainSettings(iterations=80, batch_size=32, windows=256, warmup_iterations=10, progress=False)
    den, res = train_tsdiff(cfg, seasonal.train, settings, tmp_path)
    assert (tmp_path / f"{CKPT_NAME}.safetensors").is_file()
    first, last = sum(res.losses[:10]) / 10, sum(res.losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert tsdiff_config(den) == cfg and not den.training
    # Run again with more steps: resumes at step 80 from the checkpoint.
    den2, res2 = train_tsdiff(cfg, seasonal.train, TrainSettings(**{**settings.__dict__, "iterations": 90}), tmp_path)
    assert res2.resumed_from == 80 and res2.step == 90
    assert all(torch.isfinite(p).all() for p in den2.parameters())
