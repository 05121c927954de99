"""fewstep core: schedules, the Denoiser contract, solvers, training, checkpoints, metrics.

Importing it is cheap: no Triton, no CUDA initialisation, no network access.
"""

from .denoiser import PREDICTIONS, Denoiser, convert
from .schedules import EDM, RectifiedFlow, VPCosine, VPDiscrete, from_diffusers as schedule_from_diffusers
from .solvers import available, sample

__all__ = [
    "Denoiser",
    "PREDICTIONS",
    "convert",
    "VPDiscrete",
    "VPCosine",
    "EDM",
    "RectifiedFlow",
    "schedule_from_diffusers",
    "sample",
    "available",
]
