"""The one model contract: a Denoiser maps (x_t, t, cond) to a prediction of x0.

After DPM-Solver's ``model_wrapper`` (Lu et al. 2022): the wrapper owns the parametrisation
(eps / x0 / v / flow) and classifier-free guidance (Ho & Salimans 2022), so solvers and losses only
ever see x0 (or ask for another parametrisation with :meth:`Denoiser.predict`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .card import Boundary, ModelCard, Reparam
from .schedules import Schedule
from .updates import PREDICTIONS, _bcast, _check_prediction, convert, eps_from_x0, from_x0_eps, to_x0_eps  # noqa: F401 (the public conversions)

class Denoiser(nn.Module):
    """A network with its schedule and parametrisation; ``forward`` returns x0.

    Args:
        net: callable ``net(x, net_time, cond) -> prediction`` (any nn.Module).
        schedule: the noise process the net was trained on.
        prediction: what the net outputs: "eps", "x0", "v" or "flow".
        sample_shape: shape of one sample, e.g. (1, 16, 16); inputs are checked against it.
        num_classes: for class-label nets, the null label (unconditional) is ``num_classes``.
        guidance: default classifier-free guidance scale w at sampling time (1 = no guidance).
        clip_x0: if set, x0 predictions are clipped to [-clip_x0, clip_x0] at sampling time (not in
            training mode) and the other parametrisations follow from the clipped x0 (diffusers'
            ``clip_sample``; Saharia et al. 2022 static thresholding). For data in a known range.
        boundary: a consistency model's skip/out parametrisation (:class:`~fewstep.core.card.Boundary`),
            part of what the model returns, so it lives here and not on the card.
        reparam: the net predicts another parametrisation, converted to ``prediction`` at every call
            (:class:`~fewstep.core.card.Reparam`: a student that keeps a teacher's weights).
        card: how to use the checkpoint (:class:`~fewstep.core.card.ModelCard`: a student's step count
            and own sampling rule, provenance); ``sample(den, x)`` reads it, the forward pass never does.
    Counters: ``nfe`` counts Denoiser calls, ``net_evals`` counts network forward passes
    (a guided call is one NFE and two network evaluations), ``sample_evals`` counts samples through
    the network (a forward pass on a batch of B counts B; a batched guided call 2 B).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        prediction: str,
        *,
        sample_shape: tuple[int, ...] | None = None,
        num_classes: int = 0,
        guidance: float = 1.0,
        clip_x0: float | None = None,
        boundary: Boundary | None = None,
        card: ModelCard | None = None,
        reparam: Reparam | None = None,
    ):
        super().__init__()
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fewstep Schedule, got {type(schedule).__name__}")
        self.net = net
        self.schedule = schedule
        self.prediction = _check_prediction(prediction)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.num_classes = int(num_classes)
        self.guidance = float(guidance)
        if clip_x0 is not None and clip_x0 <= 0:
            raise ValueError(f"clip_x0={clip_x0} must be positive (the data range), or None")
        self.clip_x0 = clip_x0
        if boundary is not None and not isinstance(boundary, Boundary):
            raise TypeError(f"boundary must be a fewstep.core.card.Boundary, got {type(boundary).__name__}")
        self.boundary = boundary
        if reparam is not None and not isinstance(reparam, Reparam):
            raise TypeError(f"reparam must be a fewstep.core.card.Reparam, got {type(reparam).__name__}")
        self.reparam = reparam
        if card is not None and not isinstance(card, ModelCard):
            raise TypeError(f"card must be a fewstep.core.card.ModelCard, got {type(card).__name__}")
        self.card = card or ModelCard()
        # A guidance-distilled net takes w as an input: one pass per guided call instead of two.
        self.guidance_embedded = bool(getattr(getattr(net, "config", None), "guidance_embed", False))
        self.nfe = 0
        self.net_evals = 0
        self.sample_evals = 0

    # -- bookkeeping ---------------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.nfe = 0
        self.net_evals = 0
        self.sample_evals = 0

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.schedule.alpha(t), self.schedule.sigma(t)

    # -- validation ----------------------------------------------------------------------------
    def _check(self, x: Tensor, t: Tensor | float, cond: Tensor | None) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"x must be a floating-point tensor, got {got}; convert with x.float()")
        if self.sample_shape is not None and tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but this model takes (B, {', '.join(map(str, self.sample_shape))}); "
                f"resize or pick the model trained for this data"
            )
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
        if cond is not None and cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond has batch {cond.shape[0]} but x has batch {x.shape[0]}")
        return t

    # -- network call ----------------------------------------------------------------------------
    def net_output(self, x: Tensor, t: Tensor, cond: Tensor | None, guidance: float | Tensor | None = None) -> Tensor:
        """One network evaluation at (x, t) as the net sees it (input scale, net time), unchecked:
        samplers of students whose nets output more than a prediction (ArcFlow) read it here."""
        self.net_evals += 1
        self.sample_evals += x.shape[0]
        scale = self.schedule.input_scale(t)
        x_in = x if scale is None else x * _bcast(scale, x)
        net_t = self.schedule.net_time(t).to(x.dtype)
        return self.net(x_in, net_t, cond) if guidance is None else self.net(x_in, net_t, cond, guidance=guidance)

    def _net(self, x: Tensor, t: Tensor, cond: Tensor | None, guidance: float | Tensor | None = None) -> Tensor:
        out = self.net_output(x, t, cond, guidance)
        if out.shape != x.shape:
            raise ValueError(
                f"net returned shape {tuple(out.shape)} for input {tuple(x.shape)}"
                + (f"; this student samples only with its own rule ({self.card.sampler.solver!r})" if self.card.sampler else "")
            )
        return out if self.reparam is None else self._convert_net_output(out, x, t)

    def _convert_net_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The net's ``reparam.net_prediction`` output in this Denoiser's parametrisation (card.Reparam)."""
        alpha, sigma = self.coefficients(t)
        src, f = self.reparam.net_prediction, self.reparam.alpha_floor
        # Floor only the coefficient the inversion divides by: alpha for eps, sigma for x0.
        a = alpha.clamp(min=f) if src == "eps" else alpha
        s = sigma.clamp(min=f) if src == "x0" else sigma
        x0, eps = to_x0_eps(out, src, x, a, s)
        return from_x0_eps(x0, eps, self.prediction, alpha, sigma)

    def null_cond(self, cond: Tensor) -> Tensor:
        """The unconditional counterpart of ``cond`` (null label, or NaN rows for embeddings)."""
        if cond.dtype in (torch.int64, torch.int32):
            return torch.full_like(cond, self.num_classes)
        return torch.full_like(cond, float("nan"))

    def raw(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: float | Tensor | None = None) -> Tensor:
        """One network evaluation in the net's own parametrisation, never guided: ``guidance`` is
        only the input of a guidance-embedded net (guided distillation), which sees w = 1 by default."""
        if self.guidance_embedded:
            return self._net(x, t, cond, 1.0 if guidance is None else guidance)
        return self._net(x, t, cond)

    def guided(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """The guided output in the net's parametrisation (Ho & Salimans 2022): uncond + w (cond - uncond).

        Sampling only: in training mode the CFG combination is refused (a loss must see the net's own
        output; distillation objectives guide the frozen teacher, which is in eval mode).
        """
        w = self.guidance if guidance is None else guidance
        if self.guidance_embedded:
            return self.raw(x, t, cond, w)
        w = float(w)
        if cond is None or w == 1.0:
            return self.raw(x, t, cond)
        if self.training:
            raise RuntimeError(
                f"classifier-free guidance (w={w}) asked of a Denoiser in training mode; CFG is a sampling-time "
                f"combination: call .eval() first, or leave guidance unset in losses"
            )
        self.net_evals += 1  # one batched pass evaluates the net twice
        both = self._net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, self.null_cond(cond)]))
        c, u = both.chunk(2)
        return u + w * (c - u)

    def predict(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Tensor | None = None,
        *,
        guidance: float | None = None,
        kind: str = "x0",
    ) -> Tensor:
        """Guided prediction at (x, t) in parametrisation ``kind`` (default x0)."""
        t = self._check(x, t, cond)
        self.nfe += 1
        if self.training and guidance is None:
            out = self.raw(x, t, cond)  # training never applies the model's default CFG scale
        else:
            out = self.guided(x, t, cond, guidance)
        if self.boundary is not None:
            out = self._apply_boundary(out, x, t)
        clip = self.clip_x0 is not None and not self.training
        if kind == self.prediction and not clip:
            return out
        alpha, sigma = self.coefficients(t)
        if not clip:
            return convert(out, self.prediction, kind, x, alpha, sigma)
        x0, _ = to_x0_eps(out, self.prediction, x, alpha, sigma)
        x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        eps = eps_from_x0(x, x0, alpha, sigma)
        return from_x0_eps(x0, eps, kind, alpha, sigma)

    def _apply_boundary(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Consistency skip/out parametrisation on x0, returned in the net's own parametrisation."""
        alpha, sigma = self.coefficients(t)
        x0, _ = to_x0_eps(out, self.prediction, x, alpha, sigma)
        sd, k = self.boundary.sigma_data, self.boundary.timestep_scaling
        n = k * self.schedule.net_time(t).clamp(min=0).to(x.dtype)
        c_skip = sd**2 / (n**2 + sd**2)
        c_out = n / torch.sqrt(n**2 + sd**2)
        x0 = _bcast(c_skip, x) * x + _bcast(c_out, x) * x0
        eps = eps_from_x0(x, x0, alpha, sigma)
        return from_x0_eps(x0, eps, self.prediction, alpha, sigma)

    def forward(
        self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, guidance: float | None = None, kind: str = "x0"
    ) -> Tensor:
        return self.predict(x, t, cond, guidance=guidance, kind=kind)

    def extra_repr(self) -> str:
        return (
            f"schedule={self.schedule.kind}, prediction={self.prediction}, "
            f"sample_shape={self.sample_shape}, num_classes={self.num_classes}, "
            f"boundary={self.boundary}, reparam={self.reparam}, clip_x0={self.clip_x0}, card={self.card}"
        )
