"""Checkpoints: safetensors weights + a JSON card, written atomically and validated on load.

A checkpoint named ``path`` is two files: ``path.safetensors`` (tensors) and ``path.json`` (the
card). The card records the weights' byte size and SHA-256, so a truncated, corrupt or swapped
weights file is caught on load with a message that names the file. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "fewstep-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not fit what loads it."""


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, card) paths for a checkpoint stem; accepts the stem or either file's name."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(target: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Atomically write ``tensors`` and ``card`` as a checkpoint; returns the weights path.

    Tensors are made contiguous CPU copies; shared storage is cloned (safetensors refuses it).
    The card must be JSON-serialisable; ``format``, ``version`` and the weights' size and hash
    are added to it.
    """
    weights_path, card_path = checkpoint_paths(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic_write(weights_path, lambda tmp: save_file(flat, tmp))
    full = {
        **card,
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "weights_file": weights_path.name,
        "weights_bytes": weights_path.stat().st_size,
        "weights_sha256": _sha256(weights_path),
    }
    text = json.dumps(full, indent=2, sort_keys=True)
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(text))
    return weights_path


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's JSON card (without loading the weights)."""
    _, card_path = checkpoint_paths(path)
    if not card_path.is_file():
        raise CheckpointError(
            f"{card_path}: card file not found; a fewstep checkpoint is a .safetensors file with a "
            f".json card beside it. Check the path or re-save the model with fewstep."
        )
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{card_path}: card is not valid JSON ({e}); the file is corrupt.")
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{card_path}: not a fewstep card (missing format={FORMAT!r}).")
    if card.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{card_path}: card version {card['version']} is newer than this fewstep "
            f"({FORMAT_VERSION}); upgrade fewstep to read it."
        )
    return card


def load_weights(
    path: str | os.PathLike, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_weights`: (tensors on CPU, card)."""
    weights_path, _ = checkpoint_paths(path)
    card = read_card(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found (its card exists).")
    size = weights_path.stat().st_size
    if size != card.get("weights_bytes", size):
        raise CheckpointError(
            f"{weights_path}: {size} bytes but its card says {card['weights_bytes']}: the file is "
            f"truncated or was replaced. Restore it or load an earlier checkpoint."
        )
    if verify and _sha256(weights_path) != card.get("weights_sha256"):
        raise CheckpointError(
            f"{weights_path}: SHA-256 does not match its card: the file is corrupt or belongs to "
            f"another checkpoint."
        )
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: cannot be read as safetensors ({e}).")
    return tensors, card


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``tensors`` into ``module``; mismatches raise one readable CheckpointError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise CheckpointError(
            f"{source}: weights do not fit this model: {'; '.join(parts)}. The checkpoint was made "
            f"for a different network configuration; build the net from the checkpoint's card."
        )
    module.load_state_dict(tensors, strict=True)
