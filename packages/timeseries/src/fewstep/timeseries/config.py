"""TSDiffConfig: the window a model sees (context + prediction, lags, scaling) and its size.

Kept in the checkpoint card (``Denoiser.card.provenance["tsdiff"]``), so a saved model, or any fewstep
Denoiser (e.g. a distilled student) carrying the same info, is enough to forecast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SCALINGS = ("mean", "std")


@dataclass(frozen=True)
class TSDiffConfig:
    """Window and model settings (Kollovieh et al. 2023, Sec. 3 and App. B).

    The diffused sample is (1 + len(lags), context_length + prediction_length): the mean-scaled
    target (``scaling="mean"``: divided by the mean |value| of the context, as in TSDiff;
    ``"std"``: standardised with the context's mean and std) and its lagged copies, whose values
    come from before the window. Diffusion: DDPM linear betas over ``diffusion_steps`` steps.
    """

    freq: str
    prediction_length: int
    context_length: int
    lags: tuple[int, ...] = ()
    scaling: str = "mean"
    time_features: bool = False
    hidden: int = 64
    layers: int = 3
    state: int = 32
    diffusion_steps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.1

    def __post_init__(self):
        from .data import check_freq

        check_freq(self.freq)
        object.__setattr__(self, "lags", tuple(sorted({int(lag) for lag in self.lags})))
        if self.prediction_length < 1 or self.context_length < 1:
            raise ValueError(
                f"prediction_length={self.prediction_length} and context_length={self.context_length} must be >= 1"
            )
        if any(lag < 1 for lag in self.lags):
            raise ValueError(f"lags {self.lags} must be positive (a lag of k is the value k steps earlier)")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling={self.scaling!r}; use one of {SCALINGS}")
        if self.diffusion_steps < 2:
            raise ValueError("diffusion_steps must be >= 2")

    @property
    def length(self) -> int:
        """Length of the diffused window: context + prediction."""
        return self.context_length + self.prediction_length

    @property
    def max_lag(self) -> int:
        return max(self.lags, default=0)

    @property
    def past_length(self) -> int:
        """History a forecast needs: the context plus the deepest lag."""
        return self.context_length + self.max_lag

    @property
    def channels(self) -> int:
        return 1 + len(self.lags)

    def min_series_length(self) -> int:
        """Shortest training series that yields one full window with all its lags."""
        return self.past_length + self.prediction_length

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lags"] = list(self.lags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TSDiffConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TSDiffConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**{**d, "lags": tuple(d.get("lags", ()))})
