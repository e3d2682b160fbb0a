"""Model directories: round trip, mismatch errors, no pickle, atomic writes."""

import json

import pytest
import torch

from biocnn.checkpoint import load_model, provenance, read_model_config, save_model, save_weights, update_metrics
from biocnn.errors import CheckpointError
from biocnn.io.atomic import atomic_open, write_json
from biocnn.models import build_model

SPEC = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8]}


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    save_model(tmp_path, model, {"model": SPEC, "data": {"patch": 16}}, {"val_dice": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json", "weights.safetensors"]
    loaded, config = load_model(tmp_path)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))
    assert config["data"] == {"patch": 16}
    assert update_metrics(tmp_path, {"test_dice": 0.7}) == {"val_dice": 0.5, "test_dice": 0.7}


def test_config_that_disagrees_with_weights_names_the_weight(tmp_path):
    save_model(tmp_path, build_model(SPEC), {"model": SPEC})
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["channels"] = [4, 16]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"weights do not match config.json: .*shape"):
        load_model(tmp_path)
    config["model"]["channels"] = [4, 8, 16]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing weights"):
        load_model(tmp_path)


def test_missing_corrupt_and_unknown_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model(tmp_path / "nope")
    save_model(tmp_path, build_model(SPEC), {"model": SPEC})
    (tmp_path / "weights.safetensors").write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model": {"name": "resnet9000"}}')
    with pytest.raises(CheckpointError, match="unknown model 'resnet9000'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_model_config(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write('{"a": 2, "half')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_provenance_hashes_the_training_data(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("ACGT")
    b.write_text("TTTT")
    p1 = provenance(3, [a, b])
    assert p1["seed"] == 3 and len(p1["data_sha256"]) == 64 and "torch" in p1["versions"]
    assert provenance(3, [b, a])["data_sha256"] == p1["data_sha256"]
    b.write_text("TTTA")
    assert provenance(3, [a, b])["data_sha256"] != p1["data_sha256"]
    save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    assert (tmp_path / "w.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle
