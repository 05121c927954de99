"""The typed ModelCard: JSON round trip, validation on load, cards written before it, and sampling by it."""

import json

import pytest
import torch

from fewstep.core.card import Boundary, CardError, ModelCard, SamplerRule
from fewstep.core.checkpoints import denoiser_card, load_denoiser, save_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.io import CheckpointError, save_weights
from fewstep.core.nets import UNet, UNetConfig
from fewstep.core.schedules import VPCosine
from fewstep.core.solvers import resolve_rule, sample

from .gaussian import GaussianX0
from .oldformat import write_old_format

CFG = UNetConfig(in_channels=1, image_size=8, channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_classes=0)


def _card():
    rule = SamplerRule("consistency", [0.99, 0.5, 0.0], {"note": "x"})
    return ModelCard(student_steps=2, sampler=rule, provenance={"dataset": "toy", "objective": {"method": "cd", "w": [1, 2]}})


def test_json_round_trip_is_exact():
    card = _card()
    text = json.dumps(card.to_dict())
    back = ModelCard.from_dict(json.loads(text))
    assert back == card and back.sampler.grid == (0.99, 0.5, 0.0) and back.sampler.num_steps == 2
    assert back.to_dict() == card.to_dict()
    b = Boundary(0.5, 10.0)
    assert Boundary.from_dict(json.loads(json.dumps(b.to_dict()))) == b


def test_cards_are_frozen_and_updated_by_copy():
    card = _card()
    with pytest.raises(AttributeError):
        card.student_steps = 3
    with pytest.raises(TypeError):
        card.provenance["dataset"] = "other"
    more = card.with_provenance(iterations=10)
    assert more.provenance["iterations"] == 10 and "iterations" not in card.provenance
    assert "dataset" not in more.without_provenance("dataset").provenance


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"student_steps": 0}, "student_steps"),
        ({"student_steps": 1.5}, "student_steps"),
        ({"sampler": {"solver": "nope"}}, "not a fewstep solver"),
        ({"sampler": {"grid": [1.0, 0.0]}}, "must name a 'solver'"),
        ({"sampler": {"solver": "ddim", "grid": [0.2, 0.5]}}, "strictly descending"),
        ({"sampler": {"solver": "ddim", "grid": [0.9, float("nan")]}}, "finite"),
        ({"sampler": {"solver": "ddim", "options": {"x": [1]}}}, "options"),
        ({"steps": 2}, "unknown fields"),
    ],
)
def test_bad_cards_name_the_field(bad, match):
    with pytest.raises(CardError, match=match):
        ModelCard.from_dict(bad)


def test_boundary_validates():
    for bad in ({"sigma_data": 0.5}, {"sigma_data": -1.0, "timestep_scaling": 1.0}, {"sigma_data": 0.5, "timestep_scaling": float("inf")}):
        with pytest.raises(CardError):
            Boundary.from_dict(bad)


def _den(card=None, boundary=None):
    torch.manual_seed(0)
    return Denoiser(UNet(CFG), VPCosine(), "v", sample_shape=(1, 8, 8), card=card, boundary=boundary)


def test_checkpoint_round_trip_and_a_bad_card(tmp_path):
    den = _den(_card(), Boundary(0.5, 10.0))
    save_denoiser(den, tmp_path / "m")
    back = load_denoiser(tmp_path / "m")
    assert back.card == den.card and back.boundary == den.boundary
    doc = denoiser_card(den)
    doc["card"]["sampler"]["grid"] = [0.1, 0.9]
    save_weights(tmp_path / "bad", den.net.state_dict(), doc)
    with pytest.raises(CheckpointError, match=r"bad\.json.*strictly descending"):
        load_denoiser(tmp_path / "bad")


def test_cards_written_before_the_typed_card_still_load(tmp_path):
    den = _den()
    doc = denoiser_card(den)
    del doc["card"]
    doc.update(steps=2, sampler={"solver": "arcflow", "grid": [0.99, 0.0], "components": 3}, info={"dataset": "toy"})
    write_old_format(tmp_path / "old", den.net.state_dict(), doc)
    back = load_denoiser(tmp_path / "old")
    assert back.card.student_steps == 2 and back.card.sampler.options == {"components": 3}
    assert back.card.provenance["dataset"] == "toy"


def test_sample_auto_reads_the_card():
    s = VPCosine()
    rule = SamplerRule("ddim", [float(s.t_max), 0.5, 0.0])
    den = Denoiser(GaussianX0(s), s, "x0", card=ModelCard(student_steps=2, sampler=rule))
    spec, n, grid, _ = resolve_rule(den)
    assert spec.name == "ddim" and n == 2 and torch.equal(grid, torch.tensor(rule.grid, dtype=torch.float64))
    sample(den, torch.randn(3, 4, dtype=torch.float64))
    assert den.nfe == 2  # its own two-step rule
    spec, n, grid, _ = resolve_rule(den, num_steps=5)  # another step count: the default grid
    assert n == 5 and grid == "logsnr"
