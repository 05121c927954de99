"""Small reference backbones: DDPM++ U-Net (Song et al. 2021) and DiT (Peebles & Xie 2023).

Both share one contract, `net(x, t, cond=None) -> (B, C_out, H, W)` with t on a 0..1000 scale,
and a frozen config that round-trips through a JSON dict (`build_net` / `net_spec`), which is
what checkpoint cards store.
"""

from __future__ import annotations

from fewstep.core.nets.dit import DiT, DiTConfig
from fewstep.core.nets.unet import UNet, UNetConfig
from torch import nn

NETS: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
}

__all__ = ["NETS", "DiT", "DiTConfig", "UNet", "UNetConfig", "build_net", "net_spec"]


def build_net(kind: str, config: dict) -> nn.Module:
    """Builds the net `kind` ("unet" | "dit") from its config dict (as written by `net_spec`)."""
    if kind not in NETS:
        raise ValueError(f"unknown net kind {kind!r}; known kinds are {sorted(NETS)}")
    config_cls, net_cls = NETS[kind]
    if isinstance(config, config_cls):
        return net_cls(config)
    return net_cls(config_cls.from_dict(dict(config)))


def net_spec(net: nn.Module) -> tuple[str, dict]:
    """(kind, config dict) of a net built here, so `build_net(*net_spec(net))` rebuilds it."""
    # Unwrap DDP / FSDP (`.module`) and torch.compile (`._orig_mod`) wrappers.
    while isinstance(getattr(net, "module", None), nn.Module) or hasattr(net, "_orig_mod"):
        net = getattr(net, "_orig_mod", None) or net.module
    for kind, (_, net_cls) in NETS.items():
        if type(net) is net_cls:
            return kind, net.config.to_dict()
    raise ValueError(
        f"net_spec: {type(net).__name__} is not one of fewstep's nets "
        f"({', '.join(c.__name__ for _, c in NETS.values())})"
    )
