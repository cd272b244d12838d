"""attach_ads / detach_ads on built models of every layer type, and the config route."""
from __future__ import annotations

import pytest
import torch
from advssm.ads import AdaptiveScaling, attach_ads, detach_ads
from advssm.ssm_layers import LAYERS, ModelConfig, build_model
from torch import nn


def _slots(model):
    return [block.layer.output_transform for block in model.blocks]


def test_chosen_blocks_only_and_detach_restores(tiny_model):
    model = tiny_model("s4d", n_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert attach_ads(model, activation="sigmoid", layers=[1]) is model

    slots = _slots(model)
    assert isinstance(slots[0], nn.Identity) and isinstance(slots[2], nn.Identity)
    assert isinstance(slots[1], AdaptiveScaling)
    assert (slots[1].d_model, slots[1].activation, slots[1].shift) == (model.blocks[1].layer.transform_dim,
                                                                        "sigmoid", True)
    after = model.state_dict()
    for name, value in before.items():  # every pre-existing parameter is untouched
        assert torch.equal(after[name], value), name
    added = sorted(set(after) - set(before))
    assert added and all(name.startswith("blocks.1.layer.output_transform.") for name in added)
    assert (model.config.transform, model.config.transform_options, model.config.transform_layers) == (
        "ads", {"activation": "sigmoid", "shift": True}, [1])

    assert detach_ads(model) is model
    assert all(isinstance(slot, nn.Identity) for slot in _slots(model))
    assert model.state_dict().keys() == before.keys()
    assert (model.config.transform, model.config.transform_options) == ("identity", {})


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_layer_type_runs_forward_and_backward_with_ads(tiny_model, layer):
    model = tiny_model(layer)
    has_slot = [getattr(b.layer, "has_output_transform", False) for b in model.blocks]
    x = torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        plain = model(x)
    attach_ads(model)
    ads_modules = [slot for slot in _slots(model) if isinstance(slot, AdaptiveScaling)]
    assert len(ads_modules) == sum(has_slot)
    if not ads_modules:
        pytest.fail(f"layer {layer!r} has no output-transform slot")
    for block, slot in zip(model.blocks, _slots(model)):
        if isinstance(slot, AdaptiveScaling):
            assert slot.d_model == block.layer.transform_dim  # d_inner for S6

    logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert not torch.allclose(logits, plain)  # AdS is really on the forward path
    logits.logsumexp(-1).sum().backward()
    for slot in ads_modules:
        for p in slot.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_trace_shows_ads_between_mix_and_projection(tiny_model):
    model = attach_ads(tiny_model("dss"), activation="tanh")
    with torch.no_grad():
        trace = model.forward_trace(torch.rand(2, 1, 4, 4))
        for i, block in enumerate(model.blocks):
            torch.testing.assert_close(trace[f"blocks.{i}.transform"],
                                       block.layer.output_transform(trace[f"blocks.{i}.mix"]))


def test_config_route_builds_the_same_thing():
    config = ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=2, n_classes=3,
                         transform="ads", transform_options={"activation": "tanh", "shift": False},
                         transform_layers=[0])
    model = build_model(config)
    slots = _slots(model)
    assert isinstance(slots[0], AdaptiveScaling) and isinstance(slots[1], nn.Identity)
    assert (slots[0].activation, slots[0].shift) == ("tanh", False)


def test_bad_activation_fails_before_touching_the_model(tiny_model):
    model = tiny_model("s4d")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        attach_ads(model, activation="swish")
    assert model.config.transform == "identity"
    assert all(isinstance(slot, nn.Identity) for slot in _slots(model))


def test_bad_block_index_and_foreign_model_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="outside 0..1"):
        attach_ads(tiny_model("s4d"), layers=[2])
    with pytest.raises(TypeError, match="layers must be a list of block indices"):
        attach_ads(tiny_model("s4d"), layers=1)
    with pytest.raises(ValueError, match="layers is empty"):
        attach_ads(tiny_model("s4d"), layers=[])
    with pytest.raises(TypeError, match="needs set_transform"):
        attach_ads(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs set_transform"):
        detach_ads(nn.Linear(2, 2))
