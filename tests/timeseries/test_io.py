"""A TSDiff model round-trips through the core checkpoint format (safetensors + JSON card)."""

import json

import pytest
import torch
from fewstep.core.card import ModelCard
from fewstep.core.checkpoints import load_denoiser
from fewstep.core.io import CheckpointError
from fewstep.timeseries import TSDiffConfig, build_tsdiff, load_tsdiff, save_tsdiff, tsdiff_config
from fewstep.timeseries.backbone import TSDiffNet


def _tiny(**kw):
    cfg = TSDiffConfig(freq="h", prediction_length=6, context_length=12, lags=(6,), hidden=8, layers=1, state=4, **kw)
    den = build_tsdiff(cfg, seed=1)
    with torch.no_grad():  # the output layer starts at zero; make the net do something
        for p in den.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, den.eval()


def test_save_load_round_trip(tmp_path):
    cfg, den = _tiny()
    save_tsdiff(den, tmp_path / "m", {"data": "unit"})
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["net"]["kind"] == "tsdiff_s4" and card["card"]["provenance"]["tsdiff"]["lags"] == [6] and card["card"]["provenance"]["data"] == "unit"
    back = load_tsdiff(tmp_path / "m")
    assert isinstance(back.net, TSDiffNet) and tsdiff_config(back) == cfg
    assert back.sample_shape == (2, 18) and back.prediction == "eps"
    x, t = torch.randn(4, 2, 18), torch.full((4,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(back(x, t), den(x, t), rtol=0, atol=0)
    assert isinstance(load_denoiser(tmp_path / "m").net, TSDiffNet)  # the plain core loader works too


def test_time_feature_model_round_trips(tmp_path):
    cfg, den = _tiny(time_features=True)
    save_tsdiff(den, tmp_path / "tf")
    back = load_tsdiff(tmp_path / "tf")
    assert back.net.config.cond_channels == den.net.config.cond_channels > 0


def test_corrupt_or_foreign_checkpoints(tmp_path):
    _, den = _tiny()
    save_tsdiff(den, tmp_path / "m")
    w = tmp_path / "m.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tsdiff(tmp_path / "m")
    den.card = ModelCard()
    with pytest.raises(ValueError, match="no TSDiff window settings"):
        save_tsdiff(den, tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint path"):
        load_tsdiff(tmp_path / "nothing")
