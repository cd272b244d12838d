"""A checkpoint that names AdS rebuilds with AdS, and fails clearly where advssm-ads is missing."""
from __future__ import annotations

import advssm.ssm_layers.transforms as transforms
import pytest
import torch
from advssm.ads import AdaptiveScaling, attach_ads
from advssm.ssm_layers import CheckpointError, load_checkpoint, save_checkpoint
from torch import nn


def _saved_ads_model(tiny_model, tmp_path):
    model = attach_ads(tiny_model("s4d", n_layers=3), activation="sigmoid", layers=[0, 2]).eval()
    path = tmp_path / ("ads" + save_checkpoint.suffix)
    save_checkpoint(path, model, metadata={"note": "saved with AdS"})
    return model, path


def test_checkpoint_with_ads_reloads_with_identical_logits(tiny_model, tmp_path):
    model, path = _saved_ads_model(tiny_model, tmp_path)
    loaded, meta = load_checkpoint(path)
    assert meta["user"] == {"note": "saved with AdS"}
    assert meta["model_config"]["transform"] == "ads"
    kinds = [type(block.layer.output_transform) for block in loaded.blocks]
    assert kinds == [AdaptiveScaling, nn.Identity, AdaptiveScaling]
    assert loaded.blocks[2].layer.output_transform.activation == "sigmoid"
    x = torch.rand(3, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_missing_ads_package_gives_a_checkpoint_error_naming_it(tiny_model, tmp_path, monkeypatch):
    _, path = _saved_ads_model(tiny_model, tmp_path)
    # Simulate an environment without advssm-ads: no cached class, no entry point.
    monkeypatch.setattr(transforms, "_REGISTRY", {k: v for k, v in transforms._REGISTRY.items() if k != "ads"})
    monkeypatch.setattr(transforms, "_entry_points", lambda: {})
    with pytest.raises(CheckpointError, match="advssm-ads"):
        load_checkpoint(path)
