"""Parity of fewstep's diffusers adapter against the diffusers models and schedulers themselves."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from fewstep.core.diffusers_interop import from_diffusers, load_diffusers
from fewstep.core.schedules import RectifiedFlow, VPDiscrete

from .tiny_diffusers import TINY_UNET


def _x(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def class_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**TINY_UNET, num_class_embeds=4).eval()


@pytest.fixture(scope="module")
def uncond_unet():
    torch.manual_seed(1)
    return diffusers.UNet2DModel(**TINY_UNET).eval()


@torch.no_grad()
def test_class_unet_eps_x0_and_cfg(class_unet):
    sched = diffusers.DDIMScheduler()
    den = from_diffusers(class_unet, sched)
    assert isinstance(den.schedule, VPDiscrete) and den.prediction == "eps"
    assert den.sample_shape == (3, 8, 8) and den.num_classes == 3
    assert dict(den.card.provenance) == {"source": "diffusers", "class": "UNet2DModel"}
    x, n, labels = _x((2, 3, 8, 8)), torch.tensor([10, 500]), torch.tensor([0, 2])
    t = den.schedule.timestep_to_t(n)

    # eps passes straight through.
    eps = den.predict(x, t, cond=labels, kind="eps")
    ref = class_unet(x, n, class_labels=labels).sample
    torch.testing.assert_close(eps, ref, atol=1e-5, rtol=0)

    # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) with diffusers' alphas_cumprod.
    abar = sched.alphas_cumprod[n].double().view(-1, 1, 1, 1)
    x0_ref = (x.double() - (1 - abar).sqrt() * ref.double()) / abar.sqrt()
    torch.testing.assert_close(den(x, t, labels).double(), x0_ref, atol=1e-4, rtol=1e-5)

    # No cond -> the null label (num_class_embeds - 1).
    null = torch.full_like(labels, 3)
    u = class_unet(x, n, class_labels=null).sample
    torch.testing.assert_close(den.predict(x, t, kind="eps"), u, atol=1e-5, rtol=0)

    # CFG: uncond + w (cond - uncond), per call or as the Denoiser's default.
    guided = den.predict(x, t, labels, guidance=2.0, kind="eps")
    torch.testing.assert_close(guided, u + 2.0 * (ref - u), atol=1e-5, rtol=0)
    den2 = from_diffusers(class_unet, sched, guidance=2.0)
    torch.testing.assert_close(den2.predict(x, t, labels, kind="eps"), guided, atol=1e-6, rtol=0)
    assert den2.net_evals == 2 and den2.nfe == 1


@torch.no_grad()
def test_v_prediction_matches_ddim_step(uncond_unet):
    sched = diffusers.DDIMScheduler(
        prediction_type="v_prediction",
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
    )
    sched.set_timesteps(10)
    den = from_diffusers(uncond_unet, sched)
    assert den.prediction == "v" and den.num_classes == 0
    x = _x((2, 3, 8, 8), seed=2)
    for n in (sched.timesteps[2], sched.timesteps[7]):
        v = uncond_unet(x, n).sample
        ref = sched.step(v, n, x, eta=0.0).pred_original_sample
        ours = den(x, den.schedule.timestep_to_t(n))
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unconditional"):
        den(x, 0.5, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        from_diffusers(uncond_unet, sched, guidance=2.0)


@torch.no_grad()
def test_save_and_load_round_trip(class_unet, tmp_path):
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    class_unet.save_pretrained(tmp_path / "unet")
    sched.save_pretrained(tmp_path / "scheduler")
    mem = from_diffusers(class_unet, sched, guidance=1.5)
    disk = load_diffusers(tmp_path, guidance=1.5)
    assert disk.card.provenance["source"] == "diffusers" and disk.card.provenance["class"] == "UNet2DModel"
    assert disk.schedule == mem.schedule and disk.num_classes == mem.num_classes == 3
    x, t, labels = _x((2, 3, 8, 8), seed=3), torch.tensor([0.3, 0.8]), torch.tensor([1, 0])
    torch.testing.assert_close(disk(x, t, labels), mem(x, t, labels), atol=1e-6, rtol=0)

    # A model folder plus a scheduler folder elsewhere.
    other = load_diffusers(
        tmp_path / "unet", subfolder_model=None, subfolder_scheduler=str(tmp_path / "scheduler")
    )
    torch.testing.assert_close(
        other(x, t, labels), mem(x, t, labels, guidance=1.0), atol=1e-6, rtol=0
    )

    with pytest.raises(FileNotFoundError, match="nope"):
        load_diffusers(tmp_path / "nope")
    (tmp_path / "only_sched").mkdir()
    sched.save_pretrained(tmp_path / "only_sched" / "scheduler")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers(tmp_path / "only_sched")
    class_unet.save_pretrained(tmp_path / "no_sched" / "unet")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers(tmp_path / "no_sched")


@pytest.fixture(scope="module")
def text_unet():
    torch.manual_seed(2)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    ).eval()


@torch.no_grad()
def test_text_unet_cfg_with_null_embedding(text_unet):
    sched = diffusers.DDPMScheduler()
    emb, null = _x((2, 5, 8), seed=4), _x((5, 8), seed=5)
    den = from_diffusers(text_unet, sched, null_embedding=null, guidance=3.0)
    assert den.sample_shape == (4, 8, 8) and den.card.provenance["class"] == "UNet2DConditionModel"
    x, n = _x((2, 4, 8, 8), seed=6), torch.tensor([100, 900])
    t = den.schedule.timestep_to_t(n)
    c = text_unet(x, n, encoder_hidden_states=emb).sample
    u = text_unet(x, n, encoder_hidden_states=null.expand(2, 5, 8)).sample
    torch.testing.assert_close(
        den.predict(x, t, emb, kind="eps"), u + 3.0 * (c - u), atol=1e-5, rtol=0
    )

    # A NaN row is the null prompt; no cond at all is the null prompt too.
    mixed = emb.clone()
    mixed[0] = float("nan")
    out = den.predict(x, t, mixed, guidance=1.0, kind="eps")
    torch.testing.assert_close(out[0], u[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], c[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(den.predict(x, t, kind="eps"), u, atol=1e-5, rtol=0)

    bare = from_diffusers(text_unet, sched)
    torch.testing.assert_close(bare.predict(x, t, emb, kind="eps"), c, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="null_embedding"):
        bare.predict(x, t, emb, guidance=2.0)
    with pytest.raises(ValueError, match="null_embedding"):
        bare(x, t)
    partial = emb.clone()
    partial[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not entirely NaN"):
        den(x, t, partial)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(3)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=8,  # learned sigma
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=4,
    ).eval()


@torch.no_grad()
def test_dit_labels_learned_sigma_and_cfg(dit):
    den = from_diffusers(dit, diffusers.DDIMScheduler())
    assert den.num_classes == 4 and den.sample_shape == (4, 8, 8)
    assert den.card.provenance["class"] == "DiTTransformer2DModel"
    x, n, labels = _x((2, 4, 8, 8), seed=7), torch.tensor([50, 700]), torch.tensor([3, 1])
    t = den.schedule.timestep_to_t(n)
    full = dit(x, timestep=n, class_labels=labels).sample
    assert full.shape == (2, 8, 8, 8)
    c = full[:, :4]
    torch.testing.assert_close(den.predict(x, t, labels, kind="eps"), c, atol=1e-5, rtol=0)
    u = dit(x, timestep=n, class_labels=torch.full_like(labels, 4)).sample[
        :, :4
    ]  # DiT's null class
    torch.testing.assert_close(
        den.predict(x, t, labels, guidance=4.0, kind="eps"), u + 4.0 * (c - u), atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_flow_matching_timestep_is_1000t(dit):
    den = from_diffusers(dit, diffusers.FlowMatchEulerDiscreteScheduler())
    assert isinstance(den.schedule, RectifiedFlow) and den.prediction == "flow"
    x, t, labels = _x((2, 4, 8, 8), seed=8), torch.tensor([0.25, 0.75]), torch.tensor([0, 2])
    ref = dit(x, timestep=1000 * t, class_labels=labels).sample[:, :4]
    torch.testing.assert_close(den.predict(x, t, labels, kind="flow"), ref, atol=1e-5, rtol=0)
