"""fewstep's solvers against diffusers' schedulers on a tiny random-weight UNet2DModel, same noise and times.

diffusers' ``scheduler.timesteps`` become fewstep times with ``schedule.timestep_to_t`` and are passed
as an explicit grid, followed by the scheduler's final time: 0 for ``final_sigmas_type="zero"``
(DPM-Solver, UniPC) and ``set_alpha_to_one=True`` (DDIM), whose last step returns the x0
prediction. diffusers starts from unit-variance noise (``init_noise_sigma = 1``), while
``sample`` scales x_T by sigma(t_0), so the noise goes in divided by sigma(t_0).
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from fewstep.core.diffusers_interop import from_diffusers
from fewstep.core.solvers import sample

from ..tiny_diffusers import TINY_UNET
STEPS = (5, 8, 10)
TOL = 1e-4  # relative L2 error; float64 runs agree to ~1e-7 (diffusers keeps float32 alphas/sigmas)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(1)
    return diffusers.UNet2DModel(**TINY_UNET).double().eval()


def _noise(dtype=torch.float64):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@torch.no_grad()
def _diffusers(unet, scheduler, steps, noise, **step_kw):
    scheduler.set_timesteps(steps)
    x = noise.clone()
    for n in scheduler.timesteps:
        x = scheduler.step(unet(x, n).sample, n, x, **step_kw).prev_sample
    return x


def _fewstep(unet, scheduler, steps, noise, solver, final="zero", **opts):
    scheduler.set_timesteps(steps)
    den = from_diffusers(unet, scheduler)
    ts = den.schedule.timestep_to_t(scheduler.timesteps.double())
    end = 0.0 if final == "zero" else den.schedule.t_min  # "sigma_min": the sigma of timestep 0
    ts = torch.cat([ts, torch.full((1,), end, dtype=torch.float64)])
    x_T = noise / den.schedule.sigma(ts[0]).to(noise.dtype)
    return sample(den, x_T, solver, grid=ts, **opts)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# (our solver and options, the diffusers scheduler that does the same thing)
CASES = {
    "ddim": (("ddim", {}), lambda: diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)),
    "dpmpp_2m": (
        ("dpmpp_2m", {}),
        lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
    ),
    "unipc": (("unipc", {}), lambda: diffusers.UniPCMultistepScheduler(solver_type="bh2", solver_order=2)),
    # diffusers' 3M weighs its second difference by half (only 2nd-order accurate); diffusers_d2 matches it.
    "dpmpp_3m": (("dpmpp_3m", {"diffusers_d2": True}), lambda: diffusers.DPMSolverMultistepScheduler(solver_order=3)),
    "unipc_3": (("unipc", {"order": 3}), lambda: diffusers.UniPCMultistepScheduler(solver_order=3)),
    "unipc_no_corrector": (
        ("unipc", {"disable_corrector": (0, 2)}),
        lambda: diffusers.UniPCMultistepScheduler(disable_corrector=[0, 2]),
    ),
}


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers(unet, case, steps):
    (solver, opts), make = CASES[case]
    noise = _noise()
    ref = _diffusers(unet, make(), steps, noise)
    ours = _fewstep(unet, make(), steps, noise, solver, **opts)
    assert _rel(ours, ref) < TOL


def test_dpmpp_3m_matches_diffusers_beyond_lower_order_final(unet):
    # With >= 15 steps diffusers keeps 3rd order up to the last step before 0 (which is 1st order).
    make = lambda: diffusers.DPMSolverMultistepScheduler(solver_order=3)
    noise = _noise()
    ref = _diffusers(unet, make(), 16, noise)
    assert _rel(_fewstep(unet, make(), 16, noise, "dpmpp_3m", diffusers_d2=True), ref) < TOL


@pytest.mark.parametrize("steps", STEPS)
def test_unipc_bh1_matches_diffusers(unet, steps):
    # diffusers' bh1 with final_sigmas_type="zero" returns NaN: its last (first-order) step multiplies
    # B(h) = -h = -inf by a zero residual. fewstep's last step into 0 returns x0; compare at sigma_min.
    make = lambda: diffusers.UniPCMultistepScheduler(solver_type="bh1", final_sigmas_type="sigma_min")
    noise = _noise()
    ref = _diffusers(unet, make(), steps, noise)
    assert _rel(_fewstep(unet, make(), steps, noise, "unipc_bh1", final="sigma_min"), ref) < TOL
    ours_zero = _fewstep(unet, diffusers.UniPCMultistepScheduler(solver_type="bh1"), steps, noise, "unipc_bh1")
    assert torch.isfinite(ours_zero).all()


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", (5, 8))
def test_dpmpp_2m_sde_matches_diffusers(unet, solver_type, steps):
    # Same generator, same draws: both take one float32 normal tensor per step (the last one too), so
    # this runs in float32 end to end.
    unet32 = diffusers.UNet2DModel(**TINY_UNET).eval()
    unet32.load_state_dict({k: v.float() for k, v in unet.state_dict().items()})
    make = lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type=solver_type)
    noise = _noise(torch.float32)
    ref = _diffusers(unet32, make(), steps, noise, generator=torch.Generator().manual_seed(3))
    ours = _fewstep(
        unet32,
        make(),
        steps,
        noise,
        "dpmpp_2m_sde",
        solver_type=solver_type,
        generator=torch.Generator().manual_seed(3),
    )
    assert ours.dtype == torch.float32 and _rel(ours, ref) < TOL
