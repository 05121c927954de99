"""Boundary checks for every numeric command-line option: ranges, finiteness, sizes.

Each CLI option that takes a number is declared with one of these parsers, e.g.
``typer.Option(500, "--n", parser=checks.count(1, 1_000_000))``. The value is checked while the
command line is parsed, so a bad value stops the command before any work with a message naming
the option. ``tests/reliability`` walks every command of every package CLI and fails for a numeric
option declared without one, then probes each at 0, negative, NaN, inf and absurd sizes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import typer

MAX_COUNT = 10_000_000  # the default ceiling of a count: beyond it an int is a typo, not a request


@dataclass(frozen=True)
class Number:
    """Parse and check one numeric option: an int or float in [lo, hi] (``lo_open``: lo excluded).
    Floats must be finite. ``sentinel`` lets one out-of-range value (e.g. -1, "off") through."""

    kind: type  # int or float
    lo: float
    hi: float
    lo_open: bool = False
    sentinel: float | None = None
    meaning: str = ""  # what the sentinel means, for the message

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        lo = f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"
        hi = f" and <= {self.hi:,}" if self.kind is int else f" and <= {self.hi:g}"
        extra = f" (or {self.sentinel:g}: {self.meaning})" if self.sentinel is not None else ""
        return f"{what} {lo}{hi}{extra}"

    def accepts(self, value: float) -> bool:
        if self.sentinel is not None and value == self.sentinel:
            return True
        if not math.isfinite(value):
            return False
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi

    def parse(self, text) -> int | float:
        """The value, or ValueError with a message saying what is allowed."""
        if isinstance(text, bool):
            raise ValueError(f"must be {self.describe()}, got {text}")
        try:
            if self.kind is int:
                value = text if isinstance(text, int) else int(str(text).strip().replace("_", ""))
            else:
                value = float(text)
        except (TypeError, ValueError):
            raise ValueError(f"must be {self.describe()}, got {text!r}") from None
        if not self.accepts(value):
            raise ValueError(f"must be {self.describe()}, got {text}")
        return value

    def __call__(self, text) -> int | float:  # typer's parser hook
        try:
            return self.parse(text)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None


def count(lo: int = 1, hi: int = MAX_COUNT, sentinel: int | None = None, meaning: str = "") -> Number:
    """An integer in [lo, hi] (iterations, samples, steps, sizes)."""
    return Number(int, lo, hi, sentinel=sentinel, meaning=meaning)


def seed() -> Number:
    """A random seed: 0 .. 2**31 - 1 (what every RNG here accepts)."""
    return Number(int, 0, 2**31 - 1)


def real(lo: float, hi: float, lo_open: bool = False) -> Number:
    """A finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    return Number(float, lo, hi, lo_open=lo_open)


@dataclass(frozen=True)
class IntList:
    """A comma-separated list of integers in [lo, hi], e.g. ``--nfe 5,10,20``; returns the
    canonical text (``"5,10,20"``) so the option stays a string for its command."""

    lo: int = 1
    hi: int = MAX_COUNT
    max_items: int = 64

    def parse(self, text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise ValueError(f"give comma-separated integers like 5,10 (got {text!r})")
        if len(parts) > self.max_items:
            raise ValueError(f"at most {self.max_items} values (got {len(parts)})")
        values = []
        for p in parts:
            try:
                v = int(p)
            except ValueError:
                raise ValueError(f"{p!r} is not an integer; give comma-separated integers like 5,10") from None
            if not self.lo <= v <= self.hi:
                raise ValueError(f"{v} is out of range: each value must be from {self.lo} to {self.hi:,}")
            values.append(v)
        return tuple(values)

    def __call__(self, text: str) -> str:
        try:
            return ",".join(str(v) for v in self.parse(text))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None


def int_list(lo: int = 1, hi: int = MAX_COUNT) -> IntList:
    return IntList(lo, hi)


# -- --save-every: "2m", "90s", "1h", "250it" ---------------------------------------------------------
@dataclass(frozen=True)
class SaveEvery:
    """When a training run writes its resumable checkpoint: every ``seconds`` of work or every
    ``iterations`` iterations (one of the two), and always at the end and when stopped."""

    seconds: float | None = 120.0
    iterations: int | None = None

    def __str__(self) -> str:
        return f"{self.iterations}it" if self.iterations else f"{self.seconds:g}s"

    def fields(self) -> dict:
        """The TrainConfig fields: ``replace(train_config, **save.fields())``."""
        return {"save_every": self.iterations, "save_every_seconds": self.seconds}


_SAVE_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|it)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_save_every(text: str) -> SaveEvery:
    """``"120s"``, ``"2m"``, ``"1h"`` (time of work) or ``"250it"`` (iterations)."""
    m = _SAVE_EVERY.match(str(text))
    if not m:
        raise ValueError(f"give a duration like 120s, 2m, 1h or an iteration count like 250it (got {text!r})")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "it":
        if value != int(value) or not 1 <= value <= MAX_COUNT:
            raise ValueError(f"the iteration count must be an integer from 1 to {MAX_COUNT:,} (got {text!r})")
        return SaveEvery(seconds=None, iterations=int(value))
    seconds = value * _UNIT_SECONDS[unit]
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise ValueError(f"save at least every week and at most every second (got {text!r})")
    return SaveEvery(seconds=seconds)


def save_every(text: str) -> str:
    """typer parser for ``--save-every`` (returns the text; the command calls parse_save_every)."""
    try:
        return str(parse_save_every(text))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# -- sizes -----------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable where /proc has it, else physical RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_fits(nbytes: float, what: str, hint: str) -> None:
    """Refuse, before allocating, a buffer larger than the memory left (``hint``: what to lower)."""
    free = available_memory()
    if nbytes > free:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of memory is free; {hint}"
        )
