"""What a resume may and may not do: changed settings are refused with the keys, a signal saves at
an iteration boundary, a checkpoint whose card is lost is never silently replaced."""

import signal

import pytest

from fewstep.core import faults
from fewstep.core.io import CheckpointError, read_card
from fewstep.core.losses import DenoisingLoss
from fewstep.core.train import CKPT_NAME, Stopped, TrainConfig, learning_rate, train

from ..tiny import tiny_data, tiny_denoiser


def _run(tmp, iterations=4, seed=0, resume=True, card=None, **kw):
    den = tiny_denoiser()
    x, y = tiny_data()
    loss = DenoisingLoss()
    kw = {"save_every": 1, **kw}
    cfg = TrainConfig(iterations=iterations, batch_size=8, lr=5e-3, warmup_iterations=1, seed=seed, progress=False, **kw)
    return train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, tmp, card=card, resume=resume)


def test_changed_settings_are_refused_with_the_keys(tmp_path):
    _run(tmp_path, card={"dataset": "a"})
    with pytest.raises(CheckpointError, match=r"train\.seed: 0 -> 5.*--restart"):
        _run(tmp_path, seed=5, card={"dataset": "a"})
    with pytest.raises(CheckpointError, match=r"card\.dataset: a -> b"):
        _run(tmp_path, card={"dataset": "b"})
    with pytest.raises(CheckpointError, match="has done 4, more than the 2"):
        _run(tmp_path, iterations=2, card={"dataset": "a"})
    # Volatile settings (progress bars, save cadence) and a longer plain run are fine.
    assert _run(tmp_path, iterations=6, card={"dataset": "a"}, save_every_seconds=30.0).resumed_from == 4
    assert _run(tmp_path, iterations=2, seed=5, card={"dataset": "a"}, resume=False).resumed_from == 0  # --restart
    assert read_card(tmp_path / CKPT_NAME)["settings"]["train.seed"] == 5  # the card describes the weights


def test_sigterm_saves_at_the_iteration_boundary_and_resume_is_exact(tmp_path, monkeypatch):
    full = _run(tmp_path / "full", iterations=6)
    monkeypatch.setenv("FEWSTEP_FAULT", "term:iteration:3")
    faults.reset()
    with pytest.raises(Stopped, match="stopped by SIGTERM at iteration 3 of 6") as stop:
        _run(tmp_path / "part", iterations=6, save_every=None, save_every_seconds=3600.0)
    assert stop.value.signum == signal.SIGTERM
    assert read_card(tmp_path / "part" / CKPT_NAME)["iteration"] == 3  # saved though no save was due
    monkeypatch.delenv("FEWSTEP_FAULT")
    resumed = _run(tmp_path / "part", iterations=6)
    assert resumed.resumed_from == 3 and resumed.losses == full.losses
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are the caller's again


def test_weights_without_a_card_are_never_overwritten(tmp_path):
    _run(tmp_path)
    (tmp_path / f"{CKPT_NAME}.json").unlink()  # the JSON copy: the card inside the weights still says it all
    with pytest.warns(UserWarning, match="missing"):
        assert _run(tmp_path, iterations=5).resumed_from == 4
    # An old-format checkpoint (no card inside) whose card is gone cannot be identified: refused.
    from safetensors.torch import load_file, save_file

    weights = tmp_path / f"{CKPT_NAME}.safetensors"
    save_file(load_file(weights), weights)  # rewritten without the header card
    (tmp_path / f"{CKPT_NAME}.json").unlink()
    before = weights.read_bytes()
    with pytest.raises(CheckpointError, match="cannot be told.*--restart"):
        _run(tmp_path, iterations=6)
    assert weights.read_bytes() == before


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(iterations=100, warmup_iterations=10, lr=1.0, lr_schedule="cosine")
    lrs = [learning_rate(cfg, i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01
    assert learning_rate(TrainConfig(iterations=100, warmup_iterations=10, lr=1.0), 99) == 1.0
