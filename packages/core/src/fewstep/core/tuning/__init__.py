"""Search and tuning around sampling: things that choose a grid, a step budget or a starting point.

- AutoDiffusion (Li et al. 2023): evolutionary search over time-step sequences (``autodiffusion``);
  its grids are files that ``sample(grid="file.json")`` reads without importing the search.
- DiSA (Zhao et al. 2025): diffusion-head step annealing for autoregressive generators (``disa``).
- DPM-OT (Li et al. 2023): a semi-discrete optimal-transport expressway from noise to data
  latents, then a few solver steps (``dpm_ot``).

Dependencies point one way: tuning imports ``fewstep.core.solvers``; solvers never import tuning.
"""

from .autodiffusion import SearchConfig, SearchResult, autodiffusion_search, error_to_reference
from .disa import DiSASchedule, disa_steps, sample_head
from .dpm_ot import OTConfig, SemiDiscreteOT, fit_ot_map, sample_dpm_ot
from ..solvers.grid_files import SearchedGridError, load_searched_grid, save_searched_grid

__all__ = [
    "DiSASchedule",
    "OTConfig",
    "SearchConfig",
    "SearchResult",
    "SearchedGridError",
    "SemiDiscreteOT",
    "autodiffusion_search",
    "disa_steps",
    "error_to_reference",
    "fit_ot_map",
    "load_searched_grid",
    "sample_dpm_ot",
    "sample_head",
    "save_searched_grid",
]
