"""Shipped classifiers and dFD: accuracy, real-vs-noise separation, input checks, corrupt files."""

import json
import shutil

import pytest
import torch
from fewstep.core.io import CheckpointError, checkpoint_paths
from fewstep.image.classifier import accuracy, classifier_path, load_classifier
from fewstep.image.data import load_dataset, make_shapes
from fewstep.image.quality import (
    QualityReport,
    evaluate_samples,
    real_data_baseline,
    shipped_classifier,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _real(name: str, split: str, n: int):
    """A small real subset: digits splits are cheap; fresh shapes with the split's seed."""
    if name == "digits":
        x, y = load_dataset("digits", split)
        return x[:n], y[:n]
    return make_shapes(n, seed={"train": 0, "test": 1}[split])


@pytest.mark.parametrize("name", ["digits", "shapes"])
def test_shipped_classifier_loads_small_and_accurate(name):
    weights, card_path = checkpoint_paths(classifier_path(name))
    assert weights.stat().st_size < 2 * 2**20
    card = json.loads(card_path.read_text())
    assert card["kind"] == "classifier" and card["dataset"] == name
    assert card["test_accuracy"] >= {"digits": 0.97, "shapes": 0.98}[name]
    model = shipped_classifier(name)
    x, y = _real(name, "test", 240)
    assert accuracy(model, x, y) >= 0.95


def test_digits_dfd_real_is_small_and_noise_is_large():
    x, y = load_dataset("digits", "train")
    real = evaluate_samples("digits", x[:300], y[:300])  # vs the real test split
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = evaluate_samples("digits", noise, y[:300])
    assert real.dfd < 6 and real.accuracy > 0.97 and real.precision > 0.8 and real.recall > 0.5
    assert fake.dfd > 10 * real.dfd and fake.precision < 0.5
    assert sum(real.class_histogram) == real.n == 300 and len(real.class_histogram) == 10
    assert min(real.class_histogram) > 15  # every digit predicted
    assert json.loads(json.dumps(real.to_dict()))["n"] == 300


def test_shapes_dfd_real_is_small_and_noise_is_large():
    reference, _ = _real("shapes", "test", 180)
    x, y = _real("shapes", "train", 180)
    real = evaluate_samples("shapes", x, y, reference=reference)
    noise = torch.rand(180, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = evaluate_samples("shapes", noise, y, reference=reference)
    assert real.dfd < 5 and real.accuracy > 0.97
    assert fake.dfd > 20 * real.dfd and fake.accuracy < 0.3
    assert min(real.class_histogram) > 8  # every class predicted (15 of each drawn)


def test_real_data_baseline_is_a_report():
    floor = real_data_baseline("digits", n=300)
    assert isinstance(floor, QualityReport) and floor.n == 300 and floor.dfd < 6


def test_wrong_samples_raise_clear_errors():
    ok = torch.zeros(8, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        evaluate_samples("digits", torch.zeros(8, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        evaluate_samples("shapes", torch.zeros(8, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        evaluate_samples("digits", torch.zeros(8, 16, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate_samples("digits", ok + 255)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_samples("digits", ok.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="labels"):
        evaluate_samples("digits", ok, torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        evaluate_samples("digits", ok, torch.full((8,), 10))
    with pytest.raises(ValueError, match="known datasets"):
        evaluate_samples("mnist", ok)


@pytest.mark.parametrize("damage", ["flip", "truncate", "card"])
def test_corrupted_classifier_raises_checkpoint_error(tmp_path, damage):
    weights, card = checkpoint_paths(classifier_path("digits"))
    stem = tmp_path / "digits-classifier"
    shutil.copy(weights, stem.with_suffix(".safetensors"))
    shutil.copy(card, stem.with_suffix(".json"))
    assert load_classifier(stem).config.num_classes == 10  # the intact copy loads
    target = stem.with_suffix(".json" if damage == "card" else ".safetensors")
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_classifier(stem)
