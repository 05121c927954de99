"""Checkpoints as fewstep wrote them before the card moved into the weights' header (the shipped
models still are): plain safetensors and a JSON card holding the file's size and hash."""

import hashlib
import json

from safetensors.torch import save_file


def write_old_format(path, tensors, card):
    w = path.with_name(path.name + ".safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, w)
    full = {**card, "format": "fewstep-checkpoint", "version": 1, "weights_bytes": w.stat().st_size,
            "weights_sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
    path.with_name(path.name + ".json").write_text(json.dumps(full))
