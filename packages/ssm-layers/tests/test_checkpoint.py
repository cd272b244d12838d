"""The safetensors checkpoint: round trip, atomic writes, and every bad-file case."""
import json
import os
import pickle
import random

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


@pytest.mark.parametrize("crash_in", ["save", "replace"])
def test_write_is_atomic(tmp_path, model, monkeypatch, crash_in):
    """A crash while serialising or just before the rename leaves the old file and no temporary."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    if crash_in == "save":
        monkeypatch.setattr(ckpt_module, "save", crash)
    else:
        monkeypatch.setattr(ckpt_module.os, "replace", crash)
    torch.manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build_model(ModelConfig(layer="s4d", **TINY)))
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
    # seeded, and not starting with a pickle or zip magic (random bytes start with 0x80 once in 256 runs)
    path.write_bytes(b"garbage!" + random.Random(0).randbytes(248))
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_round_trip_keeps_the_model_dtype(tmp_path, dtype):
    torch.manual_seed(2)
    model = build_model(ModelConfig(layer="s4", **TINY)).to(dtype).eval()
    save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    lr_tagged = build_model(ModelConfig(layer="s4d", layer_options={"lr": 1e-3}, **TINY)).double()
    save_checkpoint(tmp_path / "tagged.safetensors", lr_tagged)
    reloaded, _ = load_checkpoint(tmp_path / "tagged.safetensors")  # parameter attributes survive the cast
    assert reloaded.blocks[0].layer.log_dt._optim == {"lr": 1e-3, "weight_decay": 0.0}
    x = torch.rand(2, 1, 3, 3)
    assert torch.equal(loaded(x), model(x))


def test_damaged_tensor_bytes_are_caught_by_the_checksum(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit of the last tensor's data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum.*corrupt"):
        load_checkpoint(path)


def test_files_without_a_checksum_still_load(tmp_path, model):
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": model.config.to_json()})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 4, 1)
    assert torch.equal(loaded(x), model(x)) and meta["user"] == {}


def test_write_is_flushed_and_gets_ordinary_permissions(tmp_path, model, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt_module.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    assert synced  # the data is flushed before the rename
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_config_that_cannot_be_built(tmp_path, model):
    path = tmp_path / "bad.safetensors"
    cfg = model.config.to_dict() | {"layer_options": {"no_such_option": 1}}
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="cannot be built.*no_such_option"):
        load_checkpoint(path)


def test_damaged_metadata(tmp_path, model):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": "{not json"})
    with pytest.raises(CheckpointError, match="metadata is damaged"):
        load_checkpoint(path)
