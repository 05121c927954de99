"""Drive diffusers' schedulers with a fewstep Denoiser, for side-by-side solver benchmarks."""

from __future__ import annotations

import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.schedules import VPDiscrete

DIFFUSERS_PRED = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def make_scheduler(name: str, den: Denoiser):
    """A diffusers scheduler configured with the teacher's own betas and parametrisation."""
    import diffusers

    s = den.schedule
    if not isinstance(s, VPDiscrete):
        raise ValueError("the diffusers baselines need a discrete VP teacher")
    common = dict(
        num_train_timesteps=s.num_train_timesteps,
        beta_start=s.beta_start,
        beta_end=s.beta_end,
        beta_schedule=s.beta_schedule,
        prediction_type=DIFFUSERS_PRED[den.prediction],
    )
    if name == "DDIM":
        return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "DPMSolverMultistep":
        return diffusers.DPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++")
    if name == "UniPC":
        return diffusers.UniPCMultistepScheduler(**common, solver_order=2)
    if name == "Euler":
        return diffusers.EulerDiscreteScheduler(**common, timestep_spacing="trailing")
    if name == "Heun":
        return diffusers.HeunDiscreteScheduler(**common, timestep_spacing="trailing")
    raise ValueError(f"unknown diffusers scheduler {name!r}")


SCHEDULERS = ("DDIM", "DPMSolverMultistep", "UniPC", "Euler", "Heun")


def nfe_to_steps(name: str, nfe: int) -> int | None:
    """Heun spends 2 NFE per step but 1 on its last: steps = (nfe + 1) / 2."""
    if name == "Heun":
        return (nfe + 1) // 2 if (nfe + 1) % 2 == 0 else None
    return nfe


@torch.no_grad()
def sample_diffusers(name: str, den: Denoiser, noise: torch.Tensor, steps: int, cond=None) -> torch.Tensor:
    """Sample with diffusers' ``step()`` loop; the network is called through the Denoiser.

    The Denoiser supplies the prediction diffusers asks for (with its x0 clipping, if any), at the
    continuous time of diffusers' (possibly fractional) discrete timestep.
    """
    sched = make_scheduler(name, den)
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    kind = den.prediction
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        # Euler/Heun work in the EDM variable x/alpha: undo the input scaling to get x_t.
        t_cont = den.schedule.timestep_to_t(t.double())
        out = den.predict(x_in.to(noise.dtype), t_cont, cond, kind=kind)
        x = sched.step(out, t, x).prev_sample
    return x
