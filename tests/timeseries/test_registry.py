"""The core's net registry finds the time-series backbone through the ``fewstep.nets`` entry point."""

import pytest
import torch
from fewstep.core.nets import build_net, net_spec, registered_nets
from fewstep.timeseries.backbone import TSDiffNet, TSDiffNetConfig


def test_entry_point_registers_the_backbone():
    nets = registered_nets()
    assert nets["tsdiff_s4"] == (TSDiffNetConfig, TSDiffNet)
    assert {"unet", "dit"} <= set(nets)  # built-ins still there


def test_build_net_and_net_spec_round_trip():
    cfg = TSDiffNetConfig(channels=2, length=16, hidden=8, layers=1, state=4)
    torch.manual_seed(0)
    net = build_net("tsdiff_s4", cfg.to_dict())
    assert isinstance(net, TSDiffNet) and net.config == cfg
    kind, spec = net_spec(net)
    assert kind == "tsdiff_s4" and TSDiffNetConfig.from_dict(spec) == cfg
    x = torch.randn(3, 2, 16)
    assert net(x, torch.full((3,), 500.0)).shape == x.shape


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="tsdiff_s4"):
        build_net("no_such_net", {})
