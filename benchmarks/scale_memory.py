"""Memory per GPU of paper-scale DMD2-style distillation, replicated (DDP) or sharded (FSDP2 over 8).

    uv run python benchmarks/scale_memory.py

Arithmetic, not a measurement: writes the tables between the markers in docs/scale.md. The set is
DMD2's (Yin et al. 2024b): a trainable student, a trainable fake-score critic (a copy of the
teacher), a frozen teacher, all the same size P. Bytes per parameter, as the train loop keeps them:

- trainable (student, critic): fp32 master weights 4 + fp32 gradients 4 (FSDP reduces in fp32,
  ``MixedPrecisionPolicy(reduce_dtype=fp32)``) + AdamW's two fp32 moments 8 = 16 B. A recipe that
  keeps bf16 weights and gradients beside an fp32 master (2 + 2 + 4 + 8) lands on the same 16 B.
- EMA: fp32, 4 B per parameter of the module state (``train.py`` averages the whole state dict,
  so the critic's EMA is kept too, though only the student's is shipped).
- teacher: frozen, bf16, 2 B; held outside the module tree, so replicated on every GPU even
  under FSDP (the "sharded teacher" total shows what sharding it too would save).
- FSDP's working set: the all-gathered bf16 weights of the unit being computed and the one
  prefetched, 2 x 2 B x P / units.

Under FSDP over N GPUs everything trainable, the EMA, and (optionally) the teacher divide by N.
Activations depend on batch and resolution and are estimated separately (labelled estimates):
per transformer layer and sample, 34 s h bytes in bf16 with flash attention (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models", Eq. 2 without the 5 a s^2
attention-score term; it assumes a 4h MLP), and about 6 saved C x H x W tensors in bf16 per conv
ResBlock; with activation checkpointing per block only each block's input (2 B per element) is
kept, plus one block's activations while it is recomputed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table

DOC = Path(__file__).resolve().parent.parent / "docs" / "scale.md"
GPUS = 8
GB = 1e9


@dataclass(frozen=True)
class Net:
    name: str
    params: float  # P, per network (student = critic = teacher)
    units: int  # FSDP units the net is sharded into (its blocks)
    # Activation estimate inputs, per sample: transformer layers as (tokens s, width h, count),
    # conv ResBlocks as (C, H, W, count).
    layers: tuple[tuple[int, int, int], ...]
    resblocks: tuple[tuple[int, int, int, int], ...] = ()
    setting: str = ""


# SDXL's UNet (Podell et al. 2023) at 1024^2: 128^2 latent; 2 + 3 transformer blocks of depth 2 at
# 64^2 (h 640), 2 + 1 + 3 of depth 10 at 32^2 (h 1280): 70 layers; ResBlocks at 320/640/1280 channels.
SDXL = Net(
    "SDXL UNet",
    2.6e9,
    units=70,
    layers=((64 * 64, 640, 10), (32 * 32, 1280, 60)),
    resblocks=((320, 128, 128, 5), (640, 64, 64, 5), (1280, 32, 32, 7)),
    setting="1024x1024 image (latent 128x128)",
)
# Wan2.1 14B DiT: 40 blocks of width 5120; 81 frames at 480x832 -> latent 21x60x104, patch 1x2x2.
WAN = Net(
    "Wan 14B DiT", 14e9, units=40, layers=((21 * 30 * 52, 5120, 40),), setting="81 frames at 480x832 (32,760 tokens)"
)


def state_rows(net: Net) -> list[tuple[str, float, float, float]]:
    """(state, bytes per parameter, GB per GPU replicated, GB per GPU under FSDP over GPUS)."""
    p = net.params
    rows = [
        ("student weights (fp32 master)", 4, 4 * p, 4 * p / GPUS),
        ("student gradients (fp32)", 4, 4 * p, 4 * p / GPUS),
        ("student AdamW moments (2 x fp32)", 8, 8 * p, 8 * p / GPUS),
        ("critic weights + gradients + AdamW", 16, 16 * p, 16 * p / GPUS),
        ("EMA of the student (fp32)", 4, 4 * p, 4 * p / GPUS),
        ("EMA of the critic (fp32; the loop averages the whole state)", 4, 4 * p, 4 * p / GPUS),
        ("teacher (frozen, bf16, replicated)", 2, 2 * p, 2 * p),
        ("FSDP all-gathered units (2 x bf16 unit)", 0, 0.0, 2 * 2 * p / net.units),
    ]
    return [(name, b, rep / GB, fsdp / GB) for name, b, rep, fsdp in rows]


def totals(net: Net) -> dict[str, tuple[float, float]]:
    rows = state_rows(net)
    rep = sum(r[2] for r in rows)
    fsdp = sum(r[3] for r in rows)
    lean_cut = 4 * net.params / GB  # no critic EMA
    teacher = 2 * net.params / GB
    return {
        "total, as the loop runs today": (rep, fsdp),
        "total, teacher sharded too, no critic EMA": (
            rep - lean_cut,
            fsdp - lean_cut / GPUS - teacher + teacher / GPUS,
        ),
    }


def activations(net: Net) -> tuple[float, float]:
    """Estimated GB per sample for one net forward that keeps its graph: (stored, checkpointed)."""
    full = sum(34 * s * h * n for s, h, n in net.layers) + sum(6 * 2 * c * hh * w * n for c, hh, w, n in net.resblocks)
    inputs = sum(2 * s * h * n for s, h, n in net.layers) + sum(2 * c * hh * w * n for c, hh, w, n in net.resblocks)
    one_block = max([34 * s * h for s, h, _ in net.layers] + [6 * 2 * c * hh * w for c, hh, w, _ in net.resblocks])
    return full / GB, (inputs + one_block) / GB


def render() -> str:
    nets = (SDXL, WAN)
    header = ["state", "B/param"] + [f"{n.name}: {lbl}" for n in nets for lbl in ("1 GPU / DDP", f"FSDP x{GPUS}")]
    rows = []
    per_net = [state_rows(n) for n in nets]
    for i, (name, b, _, _) in enumerate(per_net[0]):
        rows.append([name, b or "-"] + [f"{r[i][k]:.1f}" for r in per_net for k in (2, 3)])
    tot = [totals(n) for n in nets]
    for key in tot[0]:
        rows.append([f"**{key}**", ""] + [f"**{t[key][k]:.1f}**" for t in tot for k in (0, 1)])
    weights = table(header, rows)

    act_rows = []
    for n in nets:
        full, ckpt = activations(n)
        act_rows.append([n.name, n.setting, f"{full:.1f}", f"{ckpt:.1f}", f"{3 * full:.0f}", f"{3 * ckpt:.1f}"])
    acts = table(
        [
            "net",
            "per sample",
            "one forward, stored",
            "one forward, checkpointed",
            "DMD2 iteration (x3), stored",
            "DMD2 iteration (x3), checkpointed",
        ],
        act_rows,
    )
    return (
        f"Weights and optimiser state, GB (1e9 bytes) per GPU, P = {SDXL.params / 1e9:.1f}B (SDXL) and "
        f"{WAN.params / 1e9:.0f}B (Wan) per network:\n\n{weights}\n\n"
        "Activations, GB per sample (**estimates**, bf16, flash attention; they scale with the batch per GPU "
        "and are not divided by FSDP):\n\n" + acts
    )


def main() -> None:
    text = DOC.read_text()
    begin, end = "<!-- scale_memory:begin -->", "<!-- scale_memory:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} lacks the {begin} / {end} markers")
    block = (
        f"{begin}\n<!-- written by benchmarks/scale_memory.py; edit the script, not this table -->\n{render()}\n{end}"
    )
    DOC.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL))
    print(render())


if __name__ == "__main__":
    main()
