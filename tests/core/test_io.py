import json

import pytest
import torch

from fewstep.core.card import ModelCard
from fewstep.core.checkpoints import load_denoiser, save_denoiser
from fewstep.core.denoiser import Denoiser
from fewstep.core.checkpoints import denoiser_card
from fewstep.core.io import CheckpointError, CheckpointWarning, load_weights, read_card, save_weights
from fewstep.core.nets import UNet, UNetConfig
from fewstep.core.schedules import VPDiscrete

from .oldformat import write_old_format

CFG = UNetConfig(in_channels=1, image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_classes=3)


def _den(prediction="v"):
    torch.manual_seed(0)
    return Denoiser(UNet(CFG), VPDiscrete("scaled_linear", 0.00085, 0.012), prediction, sample_shape=(1, 8, 8), num_classes=3, card=ModelCard(provenance={"dataset": "toy"}))


def test_denoiser_round_trip(tmp_path):
    den = _den()
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_denoiser(den, tmp_path / "m", provenance={"made_by": "test"})
    back = load_denoiser(tmp_path / "m")
    assert back.schedule == den.schedule and back.prediction == "v" and back.num_classes == 3
    assert dict(back.card.provenance) == {"dataset": "toy", "made_by": "test"} and back.card.sampler is None
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    den.eval()
    assert torch.equal(den(x, 0.3, y), back(x, 0.3, y))


def test_truncated_weights_are_named(tmp_path):
    save_denoiser(_den(), tmp_path / "m")
    w = tmp_path / "m.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*truncated"):
        load_denoiser(tmp_path / "m")


def test_corrupt_bytes_fail_the_hash(tmp_path):
    save_denoiser(_den(), tmp_path / "m")
    w = tmp_path / "m.safetensors"
    b = bytearray(w.read_bytes())
    b[-10] ^= 0xFF
    w.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_denoiser(tmp_path / "m")


def test_garbage_file_with_a_matching_card_is_not_safetensors(tmp_path):
    save_weights(tmp_path / "g", {"a": torch.zeros(2)}, {"kind": "x"})
    w = tmp_path / "g.safetensors"
    w.write_bytes(b"\x00" * w.stat().st_size)
    card = json.loads((tmp_path / "g.json").read_text())
    import hashlib

    card["weights_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (tmp_path / "g.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_weights(tmp_path / "g")


def test_missing_and_broken_cards(tmp_path):
    with pytest.raises(CheckpointError, match="card file not found"):
        load_denoiser(tmp_path / "nothing")
    den = _den()
    save_denoiser(den, tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")  # the JSON copy is damaged: the card inside the weights is used
    with pytest.warns(CheckpointWarning, match="unreadable"):
        assert load_denoiser(tmp_path / "m").prediction == "v"
    (tmp_path / "m.json").unlink()
    with pytest.warns(CheckpointWarning, match="missing"):
        assert read_card(tmp_path / "m")["kind"] == "denoiser"
    write_old_format(tmp_path / "old", den.net.state_dict(), denoiser_card(den))
    assert load_denoiser(tmp_path / "old").prediction == "v"  # checkpoints from before still load
    (tmp_path / "old.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_denoiser(tmp_path / "old")
    (tmp_path / "old.json").unlink()
    with pytest.raises(CheckpointError, match="cannot be told"):
        load_denoiser(tmp_path / "old")


def test_an_edited_json_copy_is_reported_and_ignored(tmp_path):
    save_denoiser(_den(), tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["net"]["config"]["channels"] = 10**9  # an absurd width: it must not reach the allocator
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.warns(CheckpointWarning, match="was edited"):
        assert load_denoiser(tmp_path / "m").net.config.channels == 8


def test_an_old_card_edited_to_an_absurd_width_is_refused_before_allocating(tmp_path):
    den = _den()
    card = denoiser_card(den)
    card["net"]["config"]["channels"] = 10**9
    write_old_format(tmp_path / "old", den.net.state_dict(), card)
    with pytest.raises(CheckpointError, match="channels=1000000000 would need about .* GiB"):
        load_denoiser(tmp_path / "old")


def test_mismatched_weights_and_schedule(tmp_path):
    den = _den()
    card = denoiser_card(den)
    card["net"]["config"]["channels"] = 16  # the card describes a different net than the weights
    save_weights(tmp_path / "m", den.net.state_dict(), card)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_denoiser(tmp_path / "m")
    save_denoiser(_den(), tmp_path / "ok")
    with pytest.raises(CheckpointError, match="trained with schedule"):
        load_denoiser(tmp_path / "ok", expect_schedule=VPDiscrete().to_dict())


def test_no_pickle_and_no_temp_files(tmp_path):
    save_denoiser(_den(), tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert not (tmp_path / "m.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream
