"""The verb: ``quantize(denoiser, config) -> Denoiser`` with packed low-bit layers, and its inverse
for checkpoints (``restore_structure``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..denoiser import Denoiser
from ..transforms import record
from .calibrate import RangeObserver, calibration_set, observe
from .config import QuantConfig
from .layers import BACKENDS, QuantLayer
from .tfmq import CachedTimeEmbedding, install_time_context

TEMPORAL_CONSUMERS = ("affine", "ada")  # UNet ResBlock / DiT adaLN layers reading the time embedding


def _is_fewstep_net(net: nn.Module) -> bool:
    from ..nets import NETS

    return any(type(net) is cls for _, cls in NETS.values())


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _in_channels(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features


def plan_layers(net: nn.Module, config: QuantConfig) -> dict[str, dict[str, Any]]:
    """{layer name: {"act": mode, "groups": [(start, stop), ...]}} for every layer to quantize."""
    tfmq = config.tfmq and _is_fewstep_net(net)
    act = config.act_mode
    plan: dict[str, dict[str, Any]] = {}
    for name, m in net.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or isinstance(m, nn.Conv2d) and m.groups != 1:
            continue
        if any(name == k or name.startswith(k + ".") for k in config.keep):
            continue
        if tfmq and name.startswith("time_mlp."):
            continue  # cached in full precision per time step (TFMQ)
        c = _in_channels(m)
        groups = [(0, c)]
        parent_name, _, leaf = name.rpartition(".")
        split = getattr(net.get_submodule(parent_name), "concat_split", 0) if parent_name else 0
        if config.split_shortcut and split and leaf in ("conv0", "skip") and 0 < split < c:
            groups = [(0, split), (split, c)]  # Q-Diffusion split shortcut quantization
        layer_act = act
        if act == "static" and tfmq and leaf in TEMPORAL_CONSUMERS:
            layer_act = "per_t"
        plan[name] = {"act": layer_act, "groups": groups}
    if not plan:
        raise ValueError("quantize: the net has no Linear or Conv2d layers left to quantize (check config.keep)")
    return plan


def quantize(denoiser: Denoiser, config: QuantConfig | None = None) -> Denoiser:
    """A copy of ``denoiser`` with its Linear/Conv2d layers quantized per ``config``.

    Static activation scales are calibrated on full-precision sampling trajectories (see
    `calibrate`); the returned Denoiser samples, saves (`save_denoiser`) and loads like any other.
    """
    config = config or QuantConfig()
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"quantize takes a fewstep Denoiser, got {type(denoiser).__name__}")
    if any(isinstance(m, QuantLayer) for m in denoiser.net.modules()):
        raise ValueError("this Denoiser is already quantized; quantize its full-precision original instead")
    fp_net = denoiser.net
    plan = plan_layers(fp_net, config)
    tfmq = config.tfmq and _is_fewstep_net(fp_net)
    calib = calibration_set(denoiser, config) if (config.needs_calibration or tfmq) else None

    g = torch.Generator().manual_seed(config.seed)
    observers = {
        name: RangeObserver(p["groups"], 1 if isinstance(fp_net.get_submodule(name), nn.Conv2d) else -1,
                            p["act"] == "per_t", g)
        for name, p in plan.items()
        if p["act"] in ("static", "per_t")
    }
    if observers:
        was = fp_net.training
        fp_net.eval()
        observe(fp_net, calib, observers)
        fp_net.train(was)

    new = copy.deepcopy(denoiser).eval()
    net = new.net
    ctx = install_time_context(net) if tfmq else None
    time_cache = 0
    if tfmq:
        from ..nets.embeddings import timestep_embedding

        ts = calib.t.unique().cpu()
        net.time_mlp = CachedTimeEmbedding.build(net.time_mlp, net.time_mlp[0].in_features, ts.to(calib.t.device),
                                                 timestep_embedding, ctx)
        time_cache = len(ts)
    specs: dict[str, dict[str, Any]] = {}
    for name, p in plan.items():
        layer = net.get_submodule(name)
        in_scale, t_table = None, None
        if p["act"] == "static":
            in_scale = observers[name].channel_scale(_in_channels(layer), config.observer)
        elif p["act"] == "per_t":
            in_scale = torch.ones(())
            t_table = observers[name].t_table(config.observer)
        q = QuantLayer.from_float(layer, weight_format=config.weight_format, act=p["act"], in_scale=in_scale,
                                  t_table=t_table, group=config.weight_group)
        q.time_context = ctx
        _set_module(net, name, q)
        specs[name] = layer_spec(q)
    recon = None
    if config.reconstruction != "none":
        from .reconstruct import reconstruct

        results = reconstruct(fp_net, net, list(plan), calib, config)
        recon = {"units": len(results), "kept_learned": sum(r.kept for r in results),
                 "error_nearest": sum(r.error_nearest for r in results),
                 "error_learned": sum(min(r.error_learned, r.error_nearest) for r in results)}
    record(net, {"kind": "quant", "config": config.to_dict(), "layers": specs, "time_cache": time_cache})
    new.card = new.card.with_provenance(quant={"scheme": config.scheme, "layers": len(specs),
                                      "weight_bytes": weight_bytes(net), "fp32_weight_bytes": weight_bytes(fp_net),
                                      **({"reconstruction": recon} if recon else {})})
    return new


def layer_spec(q: QuantLayer) -> dict[str, Any]:
    return {
        "kind": q.kind,
        "out": q.out_features,
        "in": q.in_features,
        "weight_format": q.weight_format,
        "act": q.act,
        "bias": q.bias is not None,
        "conv": q.conv or None,
        "n_t": 0 if q.t_values is None else len(q.t_values),
        "group": q.group,
    }


def restore_structure(net: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Rebuild the quantized layout of ``spec`` on a fresh full-precision net (weights load after)."""
    layers = spec.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError("quant transform spec lacks its 'layers'; re-save the model with fewstep")
    needs_ctx = spec.get("time_cache", 0) or any(ls["act"] == "per_t" for ls in layers.values())
    ctx = install_time_context(net) if needs_ctx else None
    for name, ls in layers.items():
        try:
            net.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"quantized layer {name!r} does not exist in this net") from e
        q = QuantLayer(ls["kind"], ls["out"], ls["in"], weight_format=ls["weight_format"], act=ls["act"],
                       bias=ls["bias"], conv=ls.get("conv"), n_t=ls.get("n_t", 0), group=ls.get("group", 0))
        q.time_context = ctx
        _set_module(net, name, q)
    n_t = int(spec.get("time_cache", 0))
    if n_t:
        width = net.time_mlp[-1].out_features
        net.time_mlp = CachedTimeEmbedding(net.time_mlp, torch.zeros(n_t), torch.zeros(n_t, width), ctx)
    return net


def weight_bytes(net: nn.Module) -> int:
    """Bytes of every stored tensor of the net (parameters and persistent buffers)."""
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def set_backend(model: nn.Module, backend: str) -> None:
    """Choose the matmul back end of every QuantLayer in ``model`` (a Denoiser or a net)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; choose one of {', '.join(BACKENDS)}")
    for m in model.modules():
        if isinstance(m, QuantLayer):
            m.backend = backend
