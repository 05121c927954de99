"""Small reference backbones: DDPM++ U-Net (Song et al. 2021) and DiT (Peebles & Xie 2023).

Both share one contract, `net(x, t, cond=None) -> (B, C_out, H, W)` with t on a 0..1000 scale,
and a frozen config that round-trips through a JSON dict (`build_net` / `net_spec`), which is
what checkpoint cards store.

Other packages add nets of any shape (e.g. fewstep-timeseries' 1-D S4 backbone) through the
``fewstep.nets`` entry-point group: each entry point names a ``(ConfigClass, NetClass)`` pair,
registered under the entry point's name, where the config has ``to_dict`` / ``from_dict`` and the
net keeps it as ``net.config``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from fewstep.core.nets.dit import DiT, DiTConfig
from fewstep.core.nets.unet import UNet, UNetConfig
from torch import nn

NETS: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
}

__all__ = ["NETS", "DiT", "DiTConfig", "UNet", "UNetConfig", "build_net", "is_fewstep_net", "net_spec", "registered_nets", "unet_config"]


def is_fewstep_net(net: nn.Module) -> bool:
    """Whether ``net`` comes from a fewstep package (built in or registered): a cheap check that
    spares callers the plugin imports ``net_spec`` needs to reject a foreign net."""
    return type(net).__module__.startswith("fewstep.")


def unet_config(net: nn.Module, purpose: str) -> dict | None:
    """The config dict of a fewstep UNet (None for a foreign net); a clear error for other fewstep
    nets, naming ``purpose`` (what needed a UNet)."""
    if not is_fewstep_net(net):
        return None
    kind, cfg = net_spec(net)
    if kind != "unet":
        raise ValueError(f"{purpose} needs a UNet teacher; this one is a {kind!r} (pass student_net)")
    return cfg


def registered_nets() -> dict[str, tuple[type, type[nn.Module]]]:
    """The built-in NETS plus every installed package's ``fewstep.nets`` entry points (built-ins win)."""
    out = dict(NETS)
    for ep in entry_points(group="fewstep.nets"):
        if ep.name not in out:
            out[ep.name] = tuple(ep.load())
    return out


def build_net(kind: str, config: dict) -> nn.Module:
    """Builds the net `kind` ("unet" | "dit" | a registered kind) from its config dict (as written by `net_spec`)."""
    nets = NETS if kind in NETS else registered_nets()
    if kind not in nets:
        raise ValueError(
            f"unknown net kind {kind!r}; known kinds are {sorted(nets)} (install the fewstep package "
            f"that provides it, e.g. fewstep-timeseries for 1-D nets)"
        )
    config_cls, net_cls = nets[kind]
    if isinstance(config, config_cls):
        return net_cls(config)
    return net_cls(config_cls.from_dict(dict(config)))


def net_spec(net: nn.Module) -> tuple[str, dict]:
    """(kind, config dict) of a net built here, so `build_net(*net_spec(net))` rebuilds it."""
    # Unwrap DDP / FSDP (`.module`) and torch.compile (`._orig_mod`) wrappers.
    while isinstance(getattr(net, "module", None), nn.Module) or hasattr(net, "_orig_mod"):
        net = getattr(net, "_orig_mod", None) or net.module
    for kind, (_, net_cls) in NETS.items():  # built-ins first: registered_nets() imports every net package
        if type(net) is net_cls:
            return kind, net.config.to_dict()
    nets = registered_nets()
    for kind, (_, net_cls) in nets.items():
        if type(net) is net_cls:
            return kind, net.config.to_dict()
    raise ValueError(
        f"net_spec: {type(net).__name__} is not one of fewstep's nets "
        f"({', '.join(c.__name__ for _, c in nets.values())}); register it under the 'fewstep.nets' entry-point group"
    )
