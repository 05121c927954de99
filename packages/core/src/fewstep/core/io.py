"""Checkpoints: safetensors weights + a JSON card, committed atomically as one file.

A checkpoint named ``path`` is ``path.safetensors`` (the tensors, with the card stored in the
safetensors header) and ``path.json`` (a copy of the card for people and tools). The weights file
is written to a temporary sibling, fsynced and renamed into place: that rename is the commit, so
weights and card can never disagree, whenever the writer dies. The JSON copy is written after it;
a loader that finds it missing or older than the weights (a writer killed in between) uses the
card inside the weights and says so. The card records a SHA-256 of the tensor contents, so a
corrupt or swapped file is caught on load with a message that names it. No pickle anywhere.

Checkpoints written before the card moved into the header (``tensors_sha256`` absent) are read
from their JSON card as before.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import faults

FORMAT = "fewstep-checkpoint"
FORMAT_VERSION = 1
HEADER_KEY = "fewstep_card"  # the card, as JSON, in the safetensors header metadata


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not fit what loads it."""


class WriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only, a file in the way); nothing was replaced."""


class CheckpointWarning(UserWarning):
    """Loading went ahead, but something about the files needs saying (a stale JSON card)."""


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write to another --out",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another --out",
    errno.EROFS: "the file system is read-only: write to another --out",
    errno.EACCES: "permission denied: write to a folder you own (another --out)",
    errno.EPERM: "permission denied: write to a folder you own (another --out)",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another --out",
    errno.EEXIST: "a file stands where a folder is needed: choose another --out",
    errno.EISDIR: "a folder stands where the file should go: choose another --out",
}


def describe_os_error(e: OSError) -> str:
    return _ADVICE.get(e.errno, e.strerror or str(e))


def checkpoint_stem(path: str | os.PathLike) -> Path:
    """The stem a checkpoint path names: ``x``, ``x.safetensors`` and ``x.json`` all name ``x``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, card) paths for a checkpoint stem; accepts the stem or either file's name."""
    p = checkpoint_stem(path)
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(target: Path, write, point: str | None = None) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``target``. A failure
    raises WriteError and leaves ``target`` as it was; the temp file is removed."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if point:
            faults.hit(point, str(target))
        os.replace(tmp, target)
        tmp = None
        _fsync_dir(target.parent)
    except OSError as e:
        raise WriteError(f"cannot write {target}: {describe_os_error(e)}. Nothing was replaced.") from None
    except SafetensorError as e:
        raise WriteError(f"cannot write {target}: {e}. Nothing was replaced.") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Atomically write ``tensors`` and ``card`` as a checkpoint; returns the weights path.

    Tensors are made contiguous CPU copies; shared storage is cloned (safetensors refuses it).
    The card must be JSON-serialisable; ``format``, ``version`` and the tensors' hash are added.
    """
    weights_path, card_path = checkpoint_paths(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    full = {
        **card,
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "weights_file": weights_path.name,
        "tensors_sha256": tensors_sha256(flat),
    }
    header = json.dumps(full, sort_keys=True)  # a card that is not JSON fails here, before any write
    _atomic_write(weights_path, lambda tmp: save_file(flat, tmp, metadata={HEADER_KEY: header}), "weights-temp")
    faults.hit("weights-committed", str(weights_path))
    text = json.dumps({**full, "weights_bytes": weights_path.stat().st_size}, indent=2, sort_keys=True)
    _atomic_write(card_path, lambda tmp: Path(tmp).write_text(text))
    return weights_path


def _check_format(card: Any, where: Path) -> dict[str, Any]:
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a fewstep card (missing format={FORMAT!r}).")
    if card.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: card version {card['version']} is newer than this fewstep ({FORMAT_VERSION}); upgrade fewstep to read it."
        )
    return card


def _header_card(weights_path: Path) -> dict[str, Any] | None:
    """The card stored in the weights' header (None for checkpoints from before it was)."""
    try:
        with safe_open(weights_path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: cannot be read as safetensors ({e}): the file is truncated or corrupt.") from None
    if HEADER_KEY not in meta:
        return None
    try:
        card = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{weights_path}: its stored card is not valid JSON ({e}); the file is corrupt.") from None
    return _check_format(card, weights_path)


def _json_card(card_path: Path) -> dict[str, Any] | None:
    if not card_path.is_file():
        return None
    try:
        return json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return {"__unreadable__": str(e)}


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's card (without loading the tensors)."""
    weights_path, card_path = checkpoint_paths(path)
    if weights_path.is_file():
        stored = _header_card(weights_path)
        if stored is not None:
            _compare_json_copy(stored, _json_card(card_path), card_path)
            return stored
    if not card_path.is_file():
        if weights_path.is_file():
            raise CheckpointError(
                f"{card_path}: card file not found, and {weights_path.name} (written by an older fewstep) carries none "
                f"inside: what the weights are cannot be told. Restore the card, or discard the checkpoint."
            )
        raise CheckpointError(
            f"{card_path}: card file not found; a fewstep checkpoint is a .safetensors file with a "
            f".json card beside it. Check the path or re-save the model with fewstep."
        )
    card = _json_card(card_path)
    if "__unreadable__" in card:
        raise CheckpointError(f"{card_path}: card is not valid JSON ({card['__unreadable__']}); the file is corrupt.")
    return _check_format(card, card_path)


def _compare_json_copy(stored: dict, copy: dict | None, card_path: Path) -> None:
    if copy is None or "__unreadable__" in copy or copy.get("tensors_sha256") != stored["tensors_sha256"]:
        state = "missing" if copy is None else "unreadable" if "__unreadable__" in copy else "older than the weights"
        warnings.warn(
            f"{card_path} is {state} (a save was interrupted after the weights were committed); "
            f"the card stored inside {card_path.with_suffix('.safetensors').name} is used",
            CheckpointWarning,
            stacklevel=3,
        )
        return
    if {k: v for k, v in copy.items() if k != "weights_bytes"} != stored:
        warnings.warn(
            f"{card_path} was edited: fewstep reads the card stored inside the weights, which the edit does not "
            f"change. To change a card, load the model and save it again.",
            CheckpointWarning,
            stacklevel=3,
        )


def load_weights(
    path: str | os.PathLike, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_weights`: (tensors on CPU, card)."""
    weights_path, _ = checkpoint_paths(path)
    card = read_card(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found (its card exists).")
    if "tensors_sha256" not in card:  # an older checkpoint: the JSON card hashes the file
        _verify_file(weights_path, card, verify)
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: cannot be read as safetensors ({e}).") from None
    if verify and "tensors_sha256" in card and tensors_sha256(tensors) != card["tensors_sha256"]:
        raise CheckpointError(
            f"{weights_path}: the tensors' SHA-256 does not match the card: the file is corrupt. Restore it or "
            f"load an earlier checkpoint."
        )
    return tensors, card


def _verify_file(weights_path: Path, card: dict, verify: bool) -> None:
    size = weights_path.stat().st_size
    if size != card.get("weights_bytes", size):
        raise CheckpointError(
            f"{weights_path}: {size} bytes but its card says {card['weights_bytes']}: the file is "
            f"truncated or was replaced. Restore it or load an earlier checkpoint."
        )
    if verify and _file_sha256(weights_path) != card.get("weights_sha256"):
        raise CheckpointError(
            f"{weights_path}: SHA-256 does not match its card: the file is corrupt or belongs to another checkpoint."
        )


def content_id(card: dict[str, Any]) -> str | None:
    """The hash that identifies a checkpoint's contents: the tensors' SHA-256 (the file's, for
    checkpoints from before the card moved into the weights)."""
    return card.get("tensors_sha256") or card.get("weights_sha256")


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether anything of a checkpoint is there (its weights or its card)."""
    return any(p.exists() for p in checkpoint_paths(path))


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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (a report, a CSV, a grid) through a temp file and one rename."""
    target = Path(path)
    _atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    return target
