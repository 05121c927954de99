"""NASA: Negative-Away Steer Attention (Nguyen et al. 2024, "SNOOPI: Supercharged One-step Diffusion
Distillation with Proper Guidance"), for one-step students that cannot use
classifier-free guidance with a negative prompt (one step leaves no room for two passes to differ).

Inside every cross-attention layer the attention to the negative prompt is subtracted from the
attention to the positive one, with the same queries:

    out = to_out( softmax(Q K_pos^T / sqrt(d)) V_pos  -  alpha softmax(Q K_neg^T / sqrt(d)) V_neg ),

K, V = to_k, to_v of the (normed) prompt embeddings; the output projection applies once (its bias
is not scaled). Self-attention layers are left to their own processors.

It is a diffusers attention processor: :func:`apply_nasa` installs it on a diffusers
``UNet2DConditionModel`` (or any model with ``attn_processors`` / ``set_attn_processor``) and
:func:`remove_nasa` puts the original processors back. fewstep's own UNet and DiT
(``fewstep.core.nets``) condition on class labels through embeddings and have no cross-attention,
so NASA does not apply to them; it is for text-conditioned diffusers models behind the adapter.
diffusers is imported lazily, inside :func:`apply_nasa` (importing this module imports nothing from it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

_ORIGINAL = "_nasa_original_processors"


def _heads(attn, x: Tensor) -> Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, _ = x.shape
    return x.view(b, n, attn.heads, -1).transpose(1, 2)


def _attend(attn, query: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(Q K^T * scale) V over the heads for one context (B, M, D_ctx); returns (B, N, H*d)."""
    key, value = attn.to_k(context), attn.to_v(context)
    q, k, v = _heads(attn, query), _heads(attn, key), _heads(attn, value)
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)  # (B, H, N, d)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d).to(query.dtype)


class NASAProcessor:
    """A diffusers attention processor: NASA on cross-attention calls, ``fallback`` on self-attention.

    ``negative``: (M, D_ctx), (1, M, D_ctx) or (B, M, D_ctx) negative-prompt embeddings; ``alpha``
    the steering strength (0 = the plain attention).
    """

    def __init__(self, negative: Tensor, alpha: float, fallback):
        if alpha < 0:
            raise ValueError(f"alpha={alpha}: NASA steers away from the negative prompt with alpha >= 0")
        self.negative = negative if negative.ndim == 3 else negative[None]
        self.alpha = float(alpha)
        self.fallback = fallback

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        if encoder_hidden_states is None or not getattr(attn, "is_cross_attention", True):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:  # (B, C, H, W) -> (B, HW, C)
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, length = encoder_hidden_states.shape[:2]
        if attention_mask is not None:  # the positive prompt's mask; the negative one attends everywhere
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)  # (B, N, H*d)
        negative = self.negative.to(encoder_hidden_states).expand(batch, -1, -1)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            negative = attn.norm_encoder_hidden_states(negative)
        out = _attend(attn, query, encoder_hidden_states, attention_mask)
        if self.alpha != 0.0:
            out = out - self.alpha * _attend(attn, query, negative, None)  # steer away from the negative prompt
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def apply_nasa(model: nn.Module, negative_embeddings: Tensor, alpha: float = 0.5) -> nn.Module:
    """Install NASA in every attention layer of a diffusers model (``set_attn_processor``); self-
    attention keeps its processor. Call :func:`remove_nasa` to undo; applying twice replaces alpha and
    the negative prompt (the originals are kept from the first call). Returns the model."""
    if not hasattr(model, "set_attn_processor") or not hasattr(model, "attn_processors"):
        raise TypeError(
            f"{type(model).__name__} has no diffusers attention processors: NASA needs a cross-attention model "
            "such as diffusers' UNet2DConditionModel (fewstep's own nets have no cross-attention)"
        )
    from diffusers.models.attention_processor import Attention

    if not any(isinstance(m, Attention) and m.is_cross_attention for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no cross-attention layer: NASA would change nothing")
    original = getattr(model, _ORIGINAL, None) or dict(model.attn_processors)
    model.set_attn_processor({name: NASAProcessor(negative_embeddings, alpha, proc) for name, proc in original.items()})
    setattr(model, _ORIGINAL, original)
    return model


def remove_nasa(model: nn.Module) -> nn.Module:
    """Put back the attention processors :func:`apply_nasa` replaced. Returns the model."""
    original = getattr(model, _ORIGINAL, None)
    if original is None:
        raise ValueError("NASA is not applied to this model (apply_nasa first)")
    model.set_attn_processor(dict(original))
    delattr(model, _ORIGINAL)
    return model


__all__ = ["NASAProcessor", "apply_nasa", "remove_nasa"]
