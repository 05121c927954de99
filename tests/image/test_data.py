"""Offline image datasets: shapes, ranges, labels, deterministic splits, distinct shapes classes."""

import math

import pytest
import torch
from fewstep.image import data
from fewstep.image.data import (
    COLOUR_NAMES,
    DATASETS,
    SHAPE_NAMES,
    load_dataset,
    load_digits,
    load_photos,
    make_shapes,
    shape_class_names,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_digits_shapes_ranges_and_labels():
    x, y = load_digits()
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))
    x8, _ = load_digits(size=8)
    assert x8.shape == (1797, 1, 8, 8)
    # At native size the values are the sklearn levels 0..16 mapped to [-1, 1].
    levels = (x8 + 1) / 2 * 16
    assert torch.allclose(levels, levels.round(), atol=1e-5)


def test_digits_split_is_deterministic_and_disjoint():
    x_tr, _ = load_digits(split="train")
    x_te, y_te = load_digits(split="test")
    assert len(x_tr) + len(x_te) == 1797 and 0.13 < len(x_te) / 1797 < 0.17
    x_te2, y_te2 = load_digits(split="test")
    assert torch.equal(x_te, x_te2) and torch.equal(y_te, y_te2)
    # No image of the test split appears in the train split (sklearn digits are unique).
    flat_tr = {tuple(v) for v in x_tr.flatten(1).tolist()}
    assert not any(tuple(v) in flat_tr for v in x_te.flatten(1).tolist())
    assert set(y_te.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        load_digits(split="valid")


def test_shapes_shapes_ranges_balance_and_determinism():
    x, y = make_shapes(60, seed=0)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(torch.bincount(y, minlength=12), torch.full((12,), 5))
    x2, y2 = make_shapes(60, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = make_shapes(60, seed=1)
    assert not torch.equal(x, x3)
    assert make_shapes(5, seed=0, size=16)[0].shape == (5, 3, 16, 16)
    names = shape_class_names()
    assert len(names) == 12 and len(set(names)) == 12
    assert names[2 * 4 + 3] == f"{COLOUR_NAMES[3]} {SHAPE_NAMES[2]}"


def test_shapes_mean_colour_matches_colour_name():
    x, y = make_shapes(120, seed=3)
    rgb = (x + 1) / 2  # (N, 3, H, W) in [0, 1]
    fg = rgb.amax(1, keepdim=True) > 0.5  # the shape: bright pixels on a dark background
    assert (fg.flatten(1).float().mean(1) > 0.03).all()  # every image shows a shape
    for c in range(12):
        sel = y == c
        mask = fg[sel].expand(-1, 3, -1, -1)
        mean = (rgb[sel] * mask).sum((0, 2, 3)) / mask.sum((0, 2, 3))  # (3,) mean shape colour
        r, g, b = mean.tolist()
        colour = COLOUR_NAMES[c % 4]
        if colour == "red":
            assert r > 0.6 and r > g + 0.4 and r > b + 0.4
        elif colour == "green":
            assert g > 0.6 and g > r + 0.4 and g > b + 0.4
        elif colour == "blue":
            assert b > 0.6 and b > r + 0.4 and b > g + 0.3
        else:
            assert r > 0.6 and g > 0.6 and min(r, g) > b + 0.4


def test_shape_masks_have_the_expected_areas():
    s = 256
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    py, px = coords.view(1, s, 1).expand(1, s, s), coords.view(1, 1, s).expand(1, s, s)
    r = 0.25
    params = {
        "shape": torch.tensor([0, 1, 2]),
        "r": torch.full((3,), r),
        "cx": torch.full((3,), 0.5),
        "cy": torch.full((3,), 0.5),
        "theta": torch.full((3,), 0.3),
    }
    area = data._shape_masks(px, py, params).mean((1, 2))  # (3,) covered fraction
    expected = [math.pi * r**2, (2 * 0.85 * r) ** 2, 3 * math.sqrt(3) / 4 * (1.35 * r) ** 2]
    assert torch.allclose(area, torch.tensor(expected), rtol=0.02)


def test_registry_and_unknown_names():
    assert set(DATASETS) == {"digits", "shapes", "photos"}
    x, y = load_dataset("digits", "test")
    info = DATASETS["digits"]
    assert x.shape[1:] == info.shape and int(y.max()) < info.num_classes
    assert DATASETS["shapes"].class_names == shape_class_names()
    with pytest.raises(ValueError, match="digits"):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="train"):
        load_dataset("shapes", "all")


def test_photos_are_offline_rgb_in_unit_range():
    photos = load_photos(["astronaut", "camera"])
    for p in photos.values():
        assert p.ndim == 3 and p.shape[0] == 3 and p.dtype == torch.float32
        assert 0 <= p.min() and p.max() <= 1 and p.std() > 0.05
    cam = photos["camera"]
    assert torch.equal(cam[0], cam[1]) and torch.equal(cam[0], cam[2])  # grey tiled to RGB
    assert "astronaut" in data.available_photos()
    with pytest.raises(ValueError, match="available"):
        load_photos(["lena"])


def test_photo_crops_are_class_balanced_deterministic_and_split_by_seed():
    x, y = load_dataset("photos", "test")
    info = DATASETS["photos"]
    assert x.shape == (150 * info.num_classes, *info.shape) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(torch.bincount(y), torch.full((info.num_classes,), 150))
    x2, _ = load_dataset("photos", "test")
    assert torch.equal(x, x2)  # the same crops on every call (and every machine)
    xt, yt = load_dataset("photos", "train")
    assert len(xt) == 1000 * info.num_classes
    # the splits are independent draws of positions: few test crops coincide with a train crop
    same = (torch.cdist(x[y == 0].flatten(1), xt[yt == 0].flatten(1)).min(1).values < 1e-6).float().mean()
    assert float(same) < 0.2
    with pytest.raises(ValueError, match="train"):
        load_dataset("photos", "all")
