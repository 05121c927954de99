"""Find a saved Denoiser by shipped name or path, across whichever fewstep packages are installed.

Modality packages advertise their shipped-weights folder under the ``fewstep.models`` entry-point
group (e.g. fewstep-image's ``digits-teacher``), so core tools such as ``fewstep quantize`` accept
those names without depending on the package.
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from .io import checkpoint_paths


def shipped() -> dict[str, Path]:
    """{name: checkpoint stem} of every shipped model of every installed fewstep package."""
    out: dict[str, Path] = {}
    for ep in entry_points(group="fewstep.models"):
        try:
            folder = Path(ep.load()())
        except ImportError as e:  # a half-installed package must not hide the others' models
            warnings.warn(f"fewstep.models entry point {ep.name!r} ({ep.value}) failed to load: {e}; reinstall that package", stacklevel=2)
            continue
        for card in sorted(folder.glob("*.json")):
            out.setdefault(card.stem, card.with_suffix(""))
    return out


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Checkpoint stem for a shipped name or a path; a clear error when it is neither."""
    s = str(name_or_path)
    stem = checkpoint_paths(s)[0].with_suffix("")
    if checkpoint_paths(stem)[1].is_file():
        return stem
    names = shipped()
    if s in names:
        return names[s]
    raise FileNotFoundError(
        f"{s!r} is neither a checkpoint path (expected {stem}.safetensors and {stem}.json) nor a shipped "
        f"model ({', '.join(sorted(names)) or 'none: install a modality package such as fewstep-image'})"
    )
