"""Offline image datasets: sklearn digits, synthetic coloured shapes, crops of bundled skimage photos.

Nothing here downloads. Images are float32 tensors (N, C, H, W) in [-1, 1] with int64 labels,
except ``load_photos`` which returns the whole [0, 1] photographs (for super-resolution work).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHAPE_NAMES = ("circle", "square", "triangle")
COLOUR_NAMES = ("red", "green", "blue", "yellow")
# RGB in [0, 1] of each colour name, before per-image brightness and tint jitter.
COLOUR_RGB = torch.tensor(
    [[0.90, 0.15, 0.10], [0.10, 0.80, 0.20], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10]]
)
DIGITS_TEST_FRACTION = 0.15
DIGITS_SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


def shape_class_names() -> tuple[str, ...]:
    """Names of the 12 shapes classes, index = shape_index * 4 + colour_index."""
    return tuple(f"{c} {s}" for s in SHAPE_NAMES for c in COLOUR_NAMES)


# ----------------------------------------------------------------------------------- digits


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled digits as ((1797, 8, 8) values 0..16, (1797,) labels).

    Reads the CSV that ships inside scikit-learn (what ``sklearn.datasets.load_digits`` reads)
    without importing sklearn, which takes seconds; falls back to sklearn if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec is not None else None
    csv = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")  # (1797, 65): 64 pixels then the label
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return d.images, d.target


@lru_cache(maxsize=4)
def _digits_all(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _digits_raw()
    x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    x = x.clamp(0.0, 1.0) * 2.0 - 1.0  # (N, 1, size, size) in [-1, 1]
    y = torch.as_tensor(labels, dtype=torch.int64)  # (N,)
    return x, y


def _digits_split_indices(n: int, split: str) -> torch.Tensor:
    """Fixed seeded permutation: the first 15% are the test split; each split in sorted order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = round(DIGITS_TEST_FRACTION * n)
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return idx.sort().values


def load_digits(size: int = 16, split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1797 8x8 handwritten digits, resized to (size, size), in [-1, 1].

    Returns x float32 (N, 1, size, size) and y int64 (N,). ``split`` is "train" (1527 images),
    "test" (270) or "all"; the split is a fixed seeded permutation, the same on every machine.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}.")
    x, y = _digits_all(size)
    if split == "all":
        return x.clone(), y.clone()
    idx = _digits_split_indices(len(y), split)
    return x[idx], y[idx]


# ----------------------------------------------------------------------------------- shapes


def _shape_masks(
    px: torch.Tensor, py: torch.Tensor, params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Filled-shape coverage at the supersampled grid: (B, S, S) float in {0, 1}.

    px, py: (1, S, S) pixel-centre coordinates in [0, 1]; params hold (B,) tensors.
    """
    view = (-1, 1, 1)
    dx = px - params["cx"].view(view)  # (B, S, S)
    dy = py - params["cy"].view(view)
    r = params["r"].view(view)
    cos, sin = params["theta"].cos().view(view), params["theta"].sin().view(view)
    u = cos * dx + sin * dy  # rotated coordinates (B, S, S)
    v = -sin * dx + cos * dy
    circle = dx.square() + dy.square() <= r.square()
    half = 0.85 * r  # square half-side: area ~2.9 r^2, close to the circle's pi r^2
    square = (u.abs() <= half) & (v.abs() <= half)
    # Equilateral triangle of circumradius 1.35 r: inside all three edges, whose outward normals
    # point at -90, 30 and 150 degrees and lie at the inradius (half the circumradius).
    inradius = 0.5 * 1.35 * r
    triangle = torch.ones_like(circle)
    for k in range(3):
        a = -math.pi / 2 + 2 * math.pi * k / 3
        triangle &= math.cos(a) * u + math.sin(a) * v <= inradius
    shape = params["shape"].view(view)
    mask = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    return mask.float()


def make_shapes(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic coloured shapes: x float32 (n, 3, size, size) in [-1, 1], y int64 (n,).

    12 balanced classes, label = shape_index * 4 + colour_index (see ``shape_class_names``).
    Each image: a filled circle / square / triangle of random centre, size and rotation, in a
    jittered red / green / blue / yellow, on a dark grey background with slight pixel noise;
    antialiased by drawing at 4x resolution and average-pooling. Deterministic in (n, seed, size).
    """
    if n < 1 or size < 4:
        raise ValueError(f"need n >= 1 and size >= 4, got n={n}, size={size}.")
    g = torch.Generator().manual_seed(seed)
    # Balanced labels in random order.
    y = (torch.arange(n) % 12)[torch.randperm(n, generator=g)]  # (n,)
    shape, colour = y // 4, y % 4

    def uniform(lo: float, hi: float, *shape_: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape_, generator=g)

    r = uniform(0.16, 0.30)  # circle radius, as a fraction of the image side
    margin = 1.35 * r + 0.03  # keeps every shape (triangle circumradius 1.35 r) inside the frame
    params = {
        "shape": shape,
        "r": r,
        "cx": margin + (1 - 2 * margin) * torch.rand(n, generator=g),
        "cy": margin + (1 - 2 * margin) * torch.rand(n, generator=g),
        "theta": uniform(0.0, 2 * math.pi),
    }
    brightness = uniform(0.8, 1.0, 1)  # (n, 1)
    fg = (COLOUR_RGB[colour] * brightness + uniform(-0.04, 0.04, 3)).clamp(0, 1)  # (n, 3)
    bg = uniform(0.02, 0.15, 1) + uniform(-0.02, 0.02, 3)  # (n, 3) dark, slightly tinted grey
    noise = 0.02 * torch.randn(n, 3, size, size, generator=g)  # (n, 3, size, size)

    factor = 4  # supersampling
    s = size * factor
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # pixel centres in [0, 1]
    py, px = coords.view(1, s, 1).expand(1, s, s), coords.view(1, 1, s).expand(1, s, s)
    x = torch.empty(n, 3, size, size)
    chunk = max(1, (1 << 22) // (s * s))  # bounds the (B, S, S) temporaries to ~16 MB each
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        mask = _shape_masks(px, py, {k: v[sl] for k, v in params.items()})  # (B, S, S)
        cover = F.avg_pool2d(mask[:, None], factor)  # (B, 1, size, size) coverage in [0, 1]
        x[sl] = bg[sl, :, None, None] + cover * (fg[sl] - bg[sl])[:, :, None, None]
    x = (x + noise).clamp(0.0, 1.0) * 2.0 - 1.0
    return x, y


# ----------------------------------------------------------------------------------- photos

# Photographs that ship inside the scikit-image wheel (skimage/data/), name -> file name.
# Read straight from that folder with PIL: skimage.data's fetchers may download (with pooch).
PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}


def _skimage_data_dir() -> Path:
    """skimage/data/ of the installed scikit-image, found without importing it (slow)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-image is not installed; photos ship inside it.")
    return Path(spec.submodule_search_locations[0]) / "data"


def available_photos() -> tuple[str, ...]:
    """Names of the bundled photos present in this scikit-image install."""
    root = _skimage_data_dir()
    return tuple(k for k, f in PHOTO_FILES.items() if (root / f).is_file())


def load_photos(names: list[str] | tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """scikit-image's bundled photographs as float32 (3, H, W) in [0, 1]; grey ones tiled to RGB.

    ``names`` defaults to every photo in ``available_photos()``; unknown or absent names raise.
    """
    from PIL import Image

    present = available_photos()
    names = present if names is None else tuple(names)
    missing = [k for k in names if k not in present]
    if missing:
        raise ValueError(f"photos {missing} are not bundled here; available: {list(present)}.")
    out = {}
    root = _skimage_data_dir()
    for k in names:
        with Image.open(root / PHOTO_FILES[k]) as im:
            a = np.asarray(im.convert("L" if im.mode == "L" else "RGB"))  # 8-bit
        a = torch.from_numpy(a.copy()).float() / 255.0  # (H, W) or (H, W, 3)
        if a.ndim == 2:
            a = a[:, :, None].expand(-1, -1, 3)
        out[k] = a.permute(2, 0, 1).contiguous()  # (3, H, W)
    return out


# Crops of those photos: the "photos" dataset, one class per photograph. Each photo is downscaled
# so its short side is PHOTO_SHORT_SIDE pixels and crops are drawn from its top PHOTO_TRAIN_ROWS
# rows. The test split is an independent draw of crop positions (another seed) from the same rows:
# a held-out sample of the same crop distribution (what FD compares against), not unseen pixels.
# The rows below are left out. Held out as a test split, their content differed from the rows
# above so much that a real-vs-real comparison measured the photos rather than the samplers.
PHOTO_SHORT_SIDE = 128
PHOTO_TRAIN_ROWS = 0.7
PHOTO_CROPS = {"train": (1000, 0), "test": (150, 1)}  # split -> (crops per photo, seed)


@lru_cache(maxsize=1)
def _downscaled_photos(short_side: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, im in load_photos(tuple(PHOTO_FILES)).items():
        h, w = im.shape[1:]
        size = (short_side, round(w * short_side / h)) if h <= w else (round(h * short_side / w), short_side)
        out[k] = F.interpolate(im[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    return out


def make_photo_crops(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 3, size, size) in [-1, 1], photo index (N,)): random crops of every bundled photo,
    class-balanced, from its top rows; train and test differ in the seed of the positions."""
    if split not in PHOTO_CROPS:
        raise ValueError(f"photos splits are {sorted(PHOTO_CROPS)}, got {split!r}.")
    per, seed = PHOTO_CROPS[split]
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for label, im in enumerate(_downscaled_photos(PHOTO_SHORT_SIDE).values()):
        h, w = im.shape[1:]
        cut = int(PHOTO_TRAIN_ROWS * h)
        rows = torch.randint(0, cut - size + 1, (per,), generator=g)  # top-left corners
        cols = torch.randint(0, w - size + 1, (per,), generator=g)
        xs += [im[:, r : r + size, c : c + size] for r, c in zip(rows.tolist(), cols.tolist())]
        ys.append(torch.full((per,), label, dtype=torch.int64))
    return torch.stack(xs) * 2 - 1, torch.cat(ys)


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    """What a labelled image dataset holds: image shape and class names."""

    name: str
    channels: int
    size: int
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} names for {self.num_classes}.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


DATASETS = {
    "digits": DatasetInfo("digits", 1, 16, 10, tuple(str(i) for i in range(10))),
    "shapes": DatasetInfo("shapes", 3, 32, 12, shape_class_names()),
    "photos": DatasetInfo("photos", 3, 32, len(PHOTO_FILES), tuple(PHOTO_FILES)),
}
SHAPES_SPLITS = {"train": (12000, 0), "test": (2000, 1)}  # split -> (n, seed)


def balanced_indices(y: torch.Tensor, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows whose labels run 0, 1, ..., k-1, 0, ... (as class-balanced samples'
    labels do), each class's rows drawn at random without replacement."""
    g = torch.Generator().manual_seed(seed)
    pools = [torch.nonzero(y == c).flatten() for c in range(k)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    taken, out = [0] * k, []
    for c in (torch.arange(n) % k).tolist():
        if taken[c] >= len(pools[c]):
            raise ValueError(f"class {c} has only {len(pools[c])} images; lower n")
        out.append(pools[c][taken[c]])
        taken[c] += 1
    return torch.stack(out)


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` for ``name``; unknown names raise ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.")
    return DATASETS[name]


@lru_cache(maxsize=4)
def _shapes_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, seed = SHAPES_SPLITS[split]
    return make_shapes(n, seed=seed, size=DATASETS["shapes"].size)


@lru_cache(maxsize=2)
def _photo_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return make_photo_crops(split, DATASETS["photos"].size)


def load_dataset(name: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a registered dataset split; x in [-1, 1] shaped (N, *DATASETS[name].shape)."""
    info = dataset_info(name)
    if name == "digits":
        return load_digits(size=info.size, split=split)
    if name == "photos":
        x, y = _photo_split(split)
        return x.clone(), y.clone()
    if split not in SHAPES_SPLITS:
        raise ValueError(f"shapes splits are {sorted(SHAPES_SPLITS)}, got {split!r}.")
    x, y = _shapes_split(split)
    return x.clone(), y.clone()
