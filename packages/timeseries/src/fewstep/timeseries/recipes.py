"""Default window settings per frequency and per built-in dataset (used by the CLI, demo and benchmark)."""

from __future__ import annotations

from gluonts.time_feature import get_seasonality

from .config import TSDiffConfig

# Built-in data: (prediction length, context length, lags, scaling). Lags reach past the context
# (TSDiff's point: the model sees the whole window, so only lags beyond it add information).
RECIPES: dict[str, tuple[int, int, tuple[int, ...], str]] = {
    "seasonal": (24, 48, (24,), "mean"),
    "complex_seasonal": (24, 48, (24,), "mean"),
    "sunspots": (11, 44, (11,), "mean"),
    "elnino": (12, 36, (12,), "mean"),
    "co2": (12, 36, (12,), "std"),
    "nile": (5, 20, (), "mean"),
}


def default_lags(freq: str, prediction_length: int) -> tuple[int, ...]:
    """One season back, when the frequency has a season longer than one step."""
    s = get_seasonality(freq)
    return (s,) if s > 1 else ()


def recipe_config(name: str, freq: str, **overrides) -> TSDiffConfig:
    """The TSDiffConfig used for built-in dataset ``name``."""
    if name not in RECIPES:
        raise ValueError(f"no recipe for {name!r}; known: {sorted(RECIPES)}")
    p, c, lags, scaling = RECIPES[name]
    return TSDiffConfig(**{"freq": freq, "prediction_length": p, "context_length": c, "lags": lags, "scaling": scaling,
                           **overrides})
