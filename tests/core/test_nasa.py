"""NASA (SNOOPI's Negative-Away Steer Attention) on a tiny random diffusers UNet2DConditionModel built
offline from a config: alpha = 0 is the plain model, alpha > 0 changes it, one cross-attention layer
matches the formula written by hand, self-attention is untouched, and removal restores the model."""

import pytest
import torch

from fewstep.core.nasa import NASAProcessor, apply_nasa, remove_nasa

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")

CTX = 12  # cross_attention_dim: the prompt embedding width

TINY_COND_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": CTX,
    "attention_head_dim": 2,
}


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**TINY_COND_UNET).eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    pos = torch.randn(2, 5, CTX, generator=g)
    neg = torch.randn(1, 7, CTX, generator=g)
    return x, pos, neg


@torch.no_grad()
def _run(model, x, pos):
    return model(x, torch.tensor([10, 500]), pos).sample


def test_alpha_zero_is_the_plain_model_and_alpha_changes_it():
    model = _unet()
    x, pos, neg = _inputs()
    plain = _run(model, x, pos)
    apply_nasa(model, neg, alpha=0.0)
    torch.testing.assert_close(_run(model, x, pos), plain, rtol=1e-5, atol=1e-6)
    apply_nasa(model, neg, alpha=0.7)  # re-applying replaces alpha
    steered = _run(model, x, pos)
    assert torch.isfinite(steered).all() and (steered - plain).abs().max() > 1e-3
    apply_nasa(model, neg[0], alpha=0.7)  # (M, D) embeddings broadcast like (1, M, D)
    torch.testing.assert_close(_run(model, x, pos), steered)


def test_one_cross_attention_layer_matches_the_formula_by_hand():
    model = _unet()
    attn = model.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.is_cross_attention
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 16, attn.to_q.in_features, generator=g)  # (B, N, C) queries' hidden states
    _, pos, neg = _inputs()
    alpha = 0.6
    apply_nasa(model, neg, alpha)
    assert isinstance(attn.processor, NASAProcessor)
    with torch.no_grad():
        out = attn(h, encoder_hidden_states=pos)
        heads = attn.heads

        def split(t):  # (B, L, H*d) -> (B, H, L, d)
            return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        def attention(ctx):
            q, k, v = split(attn.to_q(h)), split(attn.to_k(ctx)), split(attn.to_v(ctx))
            w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            return (w @ v).transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)

        expected = attn.to_out[0](attention(pos) - alpha * attention(neg.expand(2, -1, -1)))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_self_attention_keeps_its_processor_and_removal_restores_the_model():
    model = _unet()
    x, pos, neg = _inputs()
    before = dict(model.attn_processors)
    plain = _run(model, x, pos)
    apply_nasa(model, neg, alpha=1.0)
    block = model.mid_block.attentions[0].transformer_blocks[0]
    with torch.no_grad():  # self-attention (no encoder states) goes to the original processor
        h = torch.randn(2, 4, block.attn1.to_q.in_features)
        torch.testing.assert_close(
            block.attn1(h), before["mid_block.attentions.0.transformer_blocks.0.attn1.processor"](block.attn1, h)
        )
    remove_nasa(model)
    after = model.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    torch.testing.assert_close(_run(model, x, pos), plain)
    with pytest.raises(ValueError):
        remove_nasa(model)


def test_models_without_cross_attention_are_refused():
    plain_blocks = {
        **TINY_COND_UNET,
        "down_block_types": ("DownBlock2D",) * 2,
        "up_block_types": ("UpBlock2D",) * 2,
        "mid_block_type": None,
    }
    with pytest.raises(ValueError, match="cross-attention"):
        apply_nasa(diffusers.UNet2DConditionModel(**plain_blocks), torch.zeros(1, 3, CTX), 0.5)
    with pytest.raises(TypeError):
        apply_nasa(torch.nn.Linear(2, 2), torch.zeros(1, 3, CTX), 0.5)
    with pytest.raises(ValueError):
        NASAProcessor(torch.zeros(3, CTX), -1.0, None)
