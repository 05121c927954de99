"""Shipped models by name: ``digits-teacher``, ``shapes-teacher``, the classifiers, later students.

A name resolves to a checkpoint stem in the package's ``weights/`` folder; anything else is treated
as a path to a fewstep checkpoint (``model.safetensors`` + ``model.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fewstep.core.checkpoints import load_denoiser, model_card_from_json
from fewstep.core.denoiser import Denoiser
from fewstep.core.io import read_card
from fewstep.core.models import resolve_model

from .classifier import weights_dir


def shipped_names() -> list[str]:
    """Names of every checkpoint in the package's weights folder."""
    return sorted(p.stem for p in weights_dir().glob("*.json"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Checkpoint stem for a shipped name (of any installed fewstep package) or a path; a clear error otherwise."""
    return resolve_model(name_or_path)


def load_model(name_or_path: str | os.PathLike, device: str = "cpu") -> Denoiser:
    """Load a shipped or saved Denoiser."""
    return load_denoiser(resolve(name_or_path), device=device)


def summary(name_or_path: str | os.PathLike) -> str:
    """One line from a checkpoint's card: what it is, what it was trained on, its quality."""
    card = read_card(resolve(name_or_path))
    if card.get("kind") == "denoiser":
        typed = model_card_from_json(card, str(name_or_path))
        info = typed.provenance
        q = info.get("quality") or {}
        steps = f"{typed.student_steps}-step student" if typed.student_steps else "teacher"
        quality = f", dFD {q['dfd']:.2f} / acc {q['accuracy']:.2f} at {q['nfe']} NFE" if q else ""
        return (
            f"{steps} on {info.get('dataset', '?')}: {card['net']['kind']} {card['prediction']}-prediction, "
            f"{card['schedule']['kind']}{quality}"
        )
    if card.get("kind") == "classifier":
        acc = card.get("test_accuracy")
        role = ("reward: what methods may optimise, never the evaluation" if card.get("role") == "reward"
                else "evaluation: dFD features, never given to a method")
        return f"classifier for {card.get('dataset', '?')} ({role})" + (f", test accuracy {acc:.3f}" if acc else "")
    return str(card.get("kind", "unknown"))
