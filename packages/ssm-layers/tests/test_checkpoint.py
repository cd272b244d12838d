"""The safetensors checkpoint: round trip, atomic writes, and every bad-file case."""
import json
import os
import pickle

import pytest
import torch
from advssm.ssm_layers import (
    CheckpointError,
    ModelConfig,
    build_model,
    load_checkpoint,
    read_metadata,
    register_transform,
    save_checkpoint,
)
from advssm.ssm_layers import checkpoint as ckpt_module
from advssm.ssm_layers import transforms as transforms_module
from safetensors.torch import save_file
from torch import nn

TINY = dict(d_model=8, d_state=4, n_layers=2, n_classes=3)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(layer="s4d", **TINY)).eval()


@pytest.mark.parametrize("layer", ["s4", "s4d", "dss", "s5", "mega", "s6", "attention"])
def test_round_trip_gives_identical_logits(tmp_path, layer):
    torch.manual_seed(1)
    model = build_model(ModelConfig(layer=layer, **TINY)).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"epoch": 3, "note": "hi"})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 1, 3, 3)
    assert torch.equal(loaded(x), model(x))
    assert meta["user"] == {"epoch": 3, "note": "hi"}
    assert meta["format"] == "advssm-checkpoint" and meta["format_version"] == 1
    assert meta["model_config"]["layer"] == layer
    assert "torch" in meta["packages"] and "advssm-ssm-layers" in meta["packages"]
    assert not loaded.training


def test_round_trip_with_a_registered_transform(tmp_path, model):
    class Scale(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.w = nn.Parameter(torch.randn(dim))

        def forward(self, y):
            return y * self.w

    register_transform("scale-test", Scale)
    model.set_transform("scale-test")
    save_checkpoint(tmp_path / "t.safetensors", model)
    loaded, _ = load_checkpoint(tmp_path / "t.safetensors")
    assert isinstance(loaded.blocks[0].layer.output_transform, Scale)
    x = torch.rand(2, 5, 1)
    assert torch.equal(loaded(x), model(x))


def test_write_is_atomic(tmp_path, model, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_truncated_file(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_checkpoint(path)


def test_pickle_files_are_refused_without_unpickling(tmp_path, model):
    pt = tmp_path / "m.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(pt)
    raw = tmp_path / "m.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(raw)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="another format"):
        load_checkpoint(path)


def test_newer_format_version(tmp_path, model):
    path = tmp_path / "new.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "99", "model_config": model.config.to_json()})
    with pytest.raises(CheckpointError, match="newer.*upgrade advssm-ssm-layers"):
        load_checkpoint(path)


def test_mismatched_tensors(tmp_path, model):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": model.config.to_json()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def test_missing_transform_plugin_names_the_package(tmp_path, model, monkeypatch):
    path = tmp_path / "ads.safetensors"
    cfg = model.config.to_dict() | {"transform": "ads", "transform_options": {"activation": "relu"}}
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": json.dumps(cfg)})
    monkeypatch.setattr(transforms_module, "_entry_points", lambda: {})
    monkeypatch.delitem(transforms_module._REGISTRY, "ads", raising=False)
    with pytest.raises(CheckpointError, match="advssm-ads"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_read_metadata_and_suffix(tmp_path, model):
    save_checkpoint(tmp_path / "m.safetensors", model, {"k": [1, 2]})
    assert read_metadata(tmp_path / "m.safetensors")["user"] == {"k": [1, 2]}
    assert save_checkpoint.suffix == ".safetensors"


def test_non_json_metadata_is_refused(tmp_path, model):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.safetensors", model, {"x": object()})
    assert not (tmp_path / "m.safetensors").exists()
