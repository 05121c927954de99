"""Weight-rounding reconstruction: AdaRound per layer (Nagel et al. 2020) and BRECQ per block (Li et
al. 2021), run on the diffusion calibration set as Q-Diffusion does (Li et al. 2023, Sec. 3).

Nearest rounding is not the best rounding of a layer: rounding some weights the other way can cancel
errors over the layer's inputs. AdaRound learns, for each integer weight, whether to round down or
up, by minimising the error of the quantized unit's output on calibration inputs:

    W~ = s * clip(floor(W / s) + h(V), -qmax, qmax)                      (AdaRound Eq. 22)
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)                (Eq. 23, rectified sigmoid)
    f_reg(V) = sum 1 - |2 h(V) - 1|^beta                                  (Eq. 24, pushes h to 0 or 1)
    min_V  || f(W x) - f(W~ x^) ||^2 + lambda * f_reg(V)                  (Eq. 25, asymmetric)

with x the full-precision input and x^ the input in the quantized model, so that a unit also corrects
the errors of the units before it. beta anneals from 20 to 2 after a warm-up with no regulariser; at
the end each weight is rounded to floor + [h(V) >= 0.5]. The per-row scale s is kept as calibrated.
"adaround" takes each layer as a unit; "brecq" takes each residual / transformer block (all its
layers optimised jointly on the block output, BRECQ Sec. 3.2) and falls back to single layers
outside blocks. Activations stay quantized during the optimisation (straight-through estimator).
The reconstruction error is a plain MSE: a denoiser has no task loss whose Fisher BRECQ could use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .calibrate import CalibrationSet
from .config import QuantConfig
from .layers import QuantLayer
from .qtensor import fake_quant, qmax

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (AdaRound Sec. 4.2, from Louizos et al. 2018)
BETA_START, BETA_END = 20.0, 2.0  # annealing of the regulariser's exponent (AdaRound Sec. 5)
WARMUP = 0.2  # fraction of the iterations without the regulariser (BRECQ's default)
REG_WEIGHT = 0.01  # lambda of Eq. 24 against the per-sample summed squared error (BRECQ's default)
LR = 0.01  # Adam on V; higher than BRECQ's 1e-3 because a few hundred steps replace 20k
BATCH = 32  # samples per Adam step
MAX_SAMPLES = 512  # calibration samples cached per unit
MAX_CACHE_BYTES = 1 << 30  # cap on the cached inputs of one unit (each net)


# -- the rounding variables ---------------------------------------------------------------------
def rectified_sigmoid(v: Tensor) -> Tensor:
    """h(V) of AdaRound Eq. 23: a sigmoid stretched to (gamma, zeta) and clipped to [0, 1]."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: Tensor) -> Tensor:
    """V with h(V) = h for h in [0, 1) (the fractional part of W/s at initialisation)."""
    p = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def rounding_regularizer(h: Tensor, beta: float) -> Tensor:
    """f_reg of AdaRound Eq. 24: sum(1 - |2h - 1|^beta), zero when every h is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_at(step: int, iters: int, warmup: float = WARMUP) -> float | None:
    """Exponent beta at ``step``: None during the warm-up, then linear from 20 down to 2."""
    start = int(warmup * iters)
    if step < start:
        return None
    frac = (step - start) / max(1, iters - start)
    return BETA_END + (BETA_START - BETA_END) * max(0.0, 1.0 - frac)


def forward_with_weight(layer: QuantLayer, x: Tensor, w_int: Tensor) -> Tensor:
    """``layer``'s forward with a float (N, K) weight in integer units (soft or hard rounding).

    Reproduces the layer's numerics y = (q_x @ w_int^T) * r * s_w + b with q_x quantized through
    a straight-through estimator, so gradients reach both ``w_int`` and ``x``.
    """
    if layer.kind == "conv":
        s_c = _channel_scale(layer)
        if s_c is not None or layer.in_scale is None:
            return _conv_with_weight(layer, x, w_int, s_c)
    rows, shape = layer.to_rows(x)  # (M, K)
    rows = rows.float()
    w = w_int * layer.scale_matrix()  # (N, K), in_scale still folded in
    if layer.act != "none":
        batch = x.shape[0] if x.ndim > 1 else 1
        r = layer.row_scale(rows, max(1, rows.shape[0] // max(1, batch)))  # (M, 1) or (1, 1)
        if layer.in_scale is None:
            rows = fake_quant(rows, r, 8)  # q_x * r
        else:
            s_in = layer.in_scale[None, :]
            rows = fake_quant(rows, r * s_in, 8) / s_in  # q_x * r: s_in lives in the weight
    y = rows @ w.t()  # (M, N)
    if layer.bias is not None:
        y = y + layer.bias
    return layer.from_rows(y.to(x.dtype), shape)


def _channel_scale(layer: QuantLayer) -> Tensor | None:
    """A conv's per-column ``in_scale`` (K,) as one value per input channel (C,), if it is one."""
    if layer.in_scale is None:
        return None
    s = layer.in_scale.reshape(layer.conv["in_channels"], -1)  # (C, kh * kw): im2col columns are channel-major
    return s[:, 0] if bool((s == s[:, :1]).all()) else None


def _conv_with_weight(layer: QuantLayer, x: Tensor, w_int: Tensor, s_c: Tensor | None) -> Tensor:
    """`forward_with_weight` for a conv whose activation scale is constant per channel and per sample
    (as `QuantLayer.conv_dequant` computes it): quantizing pixels before the convolution equals
    quantizing the im2col columns (zero padding quantizes to zero), and is far faster."""
    c, dtype = layer.conv, x.dtype
    x = x.float()
    if layer.act == "token":  # dynamic, one scale for the whole input tensor
        r = layer.row_scale(x.detach().reshape(1, -1), 1).reshape(1, 1, 1, 1)
    elif layer.act != "none":  # static: 1; per_t: the scale of each sample's time step
        r = layer.row_scale(x.new_zeros(x.shape[0], 1), 1).reshape(-1, 1, 1, 1)  # (B or 1, 1, 1, 1)
    if layer.act != "none":
        s = torch.ones((), device=x.device) if s_c is None else s_c.reshape(1, -1, 1, 1)
        x = fake_quant(x, r * s, 8) / s  # q_x * r, as the integer kernel sees it
    w = (w_int * layer.scale_matrix()).reshape(layer.out_features, c["in_channels"], *c["kernel_size"])
    y = torch.nn.functional.conv2d(x, w, layer.bias, stride=c["stride"], padding=c["padding"],
                                   dilation=c["dilation"])
    return y.to(dtype)


class SoftRounding(nn.Module):
    """A QuantLayer stand-in whose integer weights are floor(W/s) + h(V) (AdaRound Eq. 22)."""

    def __init__(self, layer: QuantLayer, w: Tensor):
        super().__init__()
        if layer.weight_format == "fp8":
            raise ValueError("AdaRound learns the rounding of integer grids; fp8 layers have none")
        self.layer = layer
        self.qmax = qmax(int(layer.bits))
        folded = w.float().to(layer.w_scale.device)  # (N, K)
        if layer.in_scale is not None:
            folded = folded * layer.in_scale[None, :]
        ratio = folded / layer.scale_matrix()
        self.register_buffer("w_floor", torch.floor(ratio))
        self.V = nn.Parameter(inverse_rectified_sigmoid(ratio - self.w_floor))

    def h(self) -> Tensor:
        return rectified_sigmoid(self.V)

    def soft_int(self) -> Tensor:
        """floor(W/s) + h(V), clipped to the grid: (N, K) float."""
        return torch.clamp(self.w_floor + self.h(), -self.qmax, self.qmax)

    def hard_int(self) -> Tensor:
        """The learned rounding: floor(W/s) + [h(V) >= 0.5], clipped: (N, K) int8."""
        up = (self.h() >= 0.5).to(self.w_floor.dtype)
        return torch.clamp(self.w_floor + up, -self.qmax, self.qmax).to(torch.int8)

    def forward(self, x: Tensor) -> Tensor:
        return forward_with_weight(self.layer, x, self.soft_int())


# -- units --------------------------------------------------------------------------------------
@dataclass
class Unit:
    """A module reconstructed as a whole and the QuantLayers (names in the net) it optimises."""

    name: str
    layers: list[str]


def block_types() -> tuple[type, ...]:
    from ..nets.dit import DiTBlock
    from ..nets.unet import ResBlock

    return (ResBlock, DiTBlock)


def reconstruction_units(net: nn.Module, names: list[str], mode: str) -> list[Unit]:
    """Units of ``mode`` ("adaround": one per layer; "brecq": one per block, layers outside blocks
    alone) over the integer QuantLayers among ``names``; other names are skipped."""
    modules = dict(net.named_modules())
    layers = [n for n in names if isinstance(modules.get(n), QuantLayer) and modules[n].weight_format != "fp8"]
    if mode == "adaround":
        return [Unit(n, [n]) for n in layers]
    blocks = [n for n, m in modules.items() if n and isinstance(m, block_types())]
    blocks = [b for b in blocks if not any(b.startswith(o + ".") for o in blocks)]  # outermost only
    units: dict[str, Unit] = {}
    for n in layers:
        owner = next((b for b in blocks if n.startswith(b + ".")), n)
        units.setdefault(owner, Unit(owner, [])).layers.append(n)
    return list(units.values())


class _Stop(Exception):
    """Raised by a capture hook once the unit's input is seen: the rest of the net is not needed."""


def _net_call(net: nn.Module, calib: CalibrationSet, idx: Tensor) -> None:
    cond = None if calib.cond is None else calib.cond[idx]
    try:
        net(calib.x[idx], calib.t[idx], cond)
    except _Stop:
        pass


@torch.no_grad()
def forward_order(net: nn.Module, units: list[Unit], calib: CalibrationSet) -> list[Unit]:
    """``units`` in the order the net first calls them (units never called are dropped)."""
    seen: list[str] = []
    handles = []
    for u in units:
        def hook(_m, _args, name=u.name):
            if name not in seen:
                seen.append(name)

        handles.append(net.get_submodule(u.name).register_forward_pre_hook(hook))
    try:
        _net_call(net, calib, torch.arange(min(2, len(calib)), device=calib.x.device))
    finally:
        for h in handles:
            h.remove()
    by_name = {u.name: u for u in units}
    return [by_name[n] for n in seen]


@dataclass
class UnitInputs:
    """The positional and keyword arguments a unit was called with, concatenated over batches."""

    args: list[Any]
    kwargs: dict[str, Any]
    lead: int  # rows along dim 0 of the batched tensors

    def pick(self, j: Tensor) -> tuple[list[Any], dict[str, Any]]:
        def sel(a):
            return a[j] if isinstance(a, Tensor) and a.ndim and a.shape[0] == self.lead else a

        return [sel(a) for a in self.args], {k: sel(v) for k, v in self.kwargs.items()}


def _batched(a: Any, lead: int) -> bool:
    return isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == lead


@torch.no_grad()
def capture_inputs(net: nn.Module, name: str, calib: CalibrationSet, idx: Tensor, batch: int = 64,
                   max_bytes: int = MAX_CACHE_BYTES) -> tuple[UnitInputs | None, int]:
    """Arguments of module ``name`` while ``net`` runs on calibration rows ``idx`` -> (inputs, rows
    used); stops early once ``max_bytes`` are cached. (None, 0) if the module is never called."""
    chunks: list[tuple[tuple, dict]] = []

    def hook(_m, args, kwargs):
        chunks.append((args, kwargs))
        raise _Stop

    handle = net.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
    used, size = 0, 0
    try:
        for i in range(0, len(idx), batch):
            before = len(chunks)
            _net_call(net, calib, idx[i : i + batch])
            if len(chunks) == before:
                return None, 0
            used = min(len(idx), i + batch)
            size += sum(a.numel() * a.element_size() for a in [*chunks[-1][0], *chunks[-1][1].values()]
                        if isinstance(a, Tensor))
            if size >= max_bytes:
                break
    finally:
        handle.remove()
    leads = [_first(a, k).shape[0] for a, k in chunks]  # rows of the main input in each batch

    def merge(values: list[Any]) -> Any:  # batched tensors are concatenated, the rest kept once
        return torch.cat(values) if _batched(values[0], leads[0]) else values[0]

    args = [merge([c[0][i] for c in chunks]) for i in range(len(chunks[0][0]))]
    kwargs = {k: merge([c[1][k] for c in chunks]) for k in chunks[0][1]}
    return UnitInputs(args, kwargs, sum(leads)), used


def _first(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _rows_t(calib: CalibrationSet, idx: Tensor, lead: int) -> Tensor | None:
    """Net time of each cached row (rows of a unit may be B * tokens); None if they do not align."""
    t = calib.t[idx].float()
    return t.repeat_interleave(lead // len(t)) if lead % len(t) == 0 else None


@torch.no_grad()
def _targets(fp_module: nn.Module, inputs: UnitInputs, batch: int) -> Tensor | None:
    outs = []
    for i in range(0, inputs.lead, batch):
        args, kwargs = inputs.pick(torch.arange(i, min(inputs.lead, i + batch), device=_device(fp_module)))
        y = fp_module(*args, **kwargs)
        if not isinstance(y, Tensor):
            return None
        outs.append(y)
    return torch.cat(outs)


def _device(module: nn.Module) -> torch.device:
    t = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if t is None else t.device


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# -- the optimisation ---------------------------------------------------------------------------
@dataclass
class UnitResult:
    """Output error of one reconstructed unit on its cached calibration inputs (mean over samples of
    the summed squared error vs the full-precision unit), with nearest and with learned rounding."""

    name: str
    layers: list[str]
    error_nearest: float
    error_learned: float

    @property
    def kept(self) -> bool:
        """Whether the learned rounding replaced nearest rounding (it must not be worse)."""
        return self.error_learned <= self.error_nearest


@torch.no_grad()
def unit_error(module: nn.Module, inputs: UnitInputs, target: Tensor, t: Tensor | None, contexts: list,
               batch: int = 64) -> float:
    """Mean over cached samples of ||target - module(inputs)||^2 (summed over each sample)."""
    total = 0.0
    for i in range(0, inputs.lead, batch):
        j = torch.arange(i, min(inputs.lead, i + batch), device=target.device)
        args, kwargs = inputs.pick(j)
        for ctx in contexts:
            ctx.t = None if t is None else t[j]
        total += float((module(*args, **kwargs) - target[j]).pow(2).flatten(1).sum(1).sum())
    return total / inputs.lead


def reconstruct_unit(fp_net: nn.Module, net: nn.Module, unit: Unit, layers: dict[str, QuantLayer],
                     calib: CalibrationSet, idx: Tensor, *, iters: int, generator: torch.Generator, lr: float = LR,
                     batch: int = BATCH, reg_weight: float = REG_WEIGHT,
                     max_bytes: int = MAX_CACHE_BYTES) -> UnitResult | None:
    """Learn the rounding of ``unit``'s layers (``layers``: name -> QuantLayer) in ``net`` (Eq. 25).

    The layers are swapped for `SoftRounding` stand-ins during the optimisation. The learned
    rounding is kept only if it does not raise the unit's error on the cached inputs (the hard
    rounding of a not fully converged h(V) can differ from the soft one). None if the unit never runs.
    """
    q_in, used = capture_inputs(net, unit.name, calib, idx, max_bytes=max_bytes)
    if q_in is None:
        return None
    idx = idx[:used]
    fp_in, _ = capture_inputs(fp_net, unit.name, calib, idx, max_bytes=1 << 62)
    target = _targets(fp_net.get_submodule(unit.name), fp_in, 64)  # f(W x), full precision
    if target is None:
        return None
    t = _rows_t(calib, idx, q_in.lead)
    nearest = {n: layers[n].int_weight().clone() for n in unit.layers}
    contexts = list({id(c): c for c in (layers[n].time_context for n in unit.layers) if c is not None}.values())
    soft = {n: SoftRounding(layers[n], QuantLayer.float_matrix(fp_net.get_submodule(n))) for n in unit.layers}
    params = [s.V for s in soft.values()]
    opt = torch.optim.Adam(params, lr=lr)
    device = target.device
    try:
        error_nearest = unit_error(net.get_submodule(unit.name), q_in, target, t, contexts)
        for n, s in soft.items():
            _set_module(net, n, s)
        module = net.get_submodule(unit.name)
        for step in range(iters):
            j = torch.randint(0, q_in.lead, (min(batch, q_in.lead),), generator=generator).to(device)
            args, kwargs = q_in.pick(j)
            for ctx in contexts:
                ctx.t = None if t is None else t[j]
            out = module(*args, **kwargs)
            loss = (out - target[j]).pow(2).flatten(1).sum(1).mean()  # ||f(W x) - f(W~ x^)||^2 per sample
            beta = beta_at(step, iters)
            if beta is not None:
                loss = loss + reg_weight * sum(rounding_regularizer(s.h(), beta) for s in soft.values())
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            opt.step()
        for n in unit.layers:
            _set_module(net, n, layers[n])
        _store(layers, {n: s.hard_int() for n, s in soft.items()})
        error_learned = unit_error(net.get_submodule(unit.name), q_in, target, t, contexts)
        if error_learned > error_nearest:
            _store(layers, nearest)
    finally:
        for n in unit.layers:
            _set_module(net, n, layers[n])
        for ctx in contexts:
            ctx.t = None
    return UnitResult(unit.name, list(unit.layers), error_nearest, error_learned)


@torch.no_grad()
def _store(layers: dict[str, QuantLayer], q_int: dict[str, Tensor]) -> None:
    """Write integer weights into the QuantLayers, keeping their per-row scales."""
    for n, q in q_int.items():
        layers[n].set_weight_int(q, layers[n].w_scale.clone())


def reconstruct(fp_net: nn.Module, net: nn.Module, names: list[str], calib: CalibrationSet | None,
                config: QuantConfig, *, lr: float = LR, batch: int = BATCH, reg_weight: float = REG_WEIGHT,
                max_samples: int = MAX_SAMPLES, max_bytes: int = MAX_CACHE_BYTES,
                progress: bool = True) -> list[UnitResult]:
    """Learn the weight rounding of the QuantLayers ``names`` of ``net`` in place (AdaRound / BRECQ).

    ``fp_net`` is the full-precision original (left unchanged), ``net`` its quantized copy with the
    same module names, ``calib`` the net-level calibration inputs. Units are reconstructed in forward
    order, each on the inputs produced by the already-reconstructed quantized net. fp8 layers and
    names that are not QuantLayers are skipped. Only the QuantLayers' ``qweight`` changes. Returns
    each reconstructed unit's error on its calibration inputs before and after.
    """
    from tqdm.auto import tqdm

    mode = config.reconstruction
    if mode not in ("adaround", "brecq"):
        raise ValueError(f"reconstruct: reconstruction={mode!r}; use 'adaround' or 'brecq' ('none' skips it)")
    if config.recon_iters < 1:
        raise ValueError(f"reconstruct: recon_iters must be >= 1, got {config.recon_iters}")
    if calib is None or len(calib) == 0:
        raise ValueError("reconstruct needs a non-empty CalibrationSet (net inputs recorded on sampling trajectories)")
    if batch < 1 or max_samples < 1:
        raise ValueError(f"reconstruct: batch ({batch}) and max_samples ({max_samples}) must be >= 1")
    units = reconstruction_units(net, list(names), mode)
    if not units:
        return []
    g = torch.Generator().manual_seed(config.seed)
    rows = min(len(calib), max_samples)  # the same calibration rows serve every unit
    idx = torch.randperm(len(calib), generator=g)[:rows].sort().values.to(calib.x.device)
    layers = {name: m for name, m in net.named_modules() if isinstance(m, QuantLayer) and m.weight_format != "fp8"}
    fp_was, q_was = fp_net.training, net.training
    fp_net.eval()
    net.eval()
    try:
        units = forward_order(net, units, calib)
        results = []
        bar = tqdm(units, desc=f"{mode} ({config.recon_iters} it/unit)", disable=not progress, leave=False)
        for unit in bar:
            bar.set_postfix_str(unit.name)
            r = reconstruct_unit(fp_net, net, unit, layers, calib, idx, iters=config.recon_iters, generator=g,
                                 lr=lr, batch=batch, reg_weight=reg_weight, max_bytes=max_bytes)
            if r is not None:
                results.append(r)
    finally:
        fp_net.train(fp_was)
        net.train(q_was)
    return results
