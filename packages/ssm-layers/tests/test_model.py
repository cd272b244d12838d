"""The classifier backbone: config round trip, presets, input handling, trace, transforms."""
import dataclasses
import json
import re

import pytest
import torch
from advssm.ssm_layers import LAYERS, PRESETS, ModelConfig, build_model, preset, register_transform
from torch import nn

TINY = dict(d_model=8, d_state=4, n_layers=2, n_classes=3)


def test_config_json_round_trip():
    cfg = ModelConfig(layer="s6", d_input=3, transform="identity", layer_options={"expand": 2}, transform_layers=[1])
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["layer"] == "s6"


@pytest.mark.parametrize("bad, match", [
    (dict(layer="s7"), "unknown layer 's7'"),
    (dict(d_model=0), "d_model must be a positive int"),
    (dict(n_classes=1), "n_classes"),
    (dict(dropout=1.5), "dropout"),
    (dict(transform_layers=[5]), "outside"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


@pytest.mark.parametrize("key, value, match", [
    ("dropout", "0.1", "dropout must be a finite number, got str '0.1'"),  # not coerced
    ("prenorm", 1, "prenorm must be true or false, got int 1"),
    ("d_model", True, "d_model must be an int, got bool True"),
    ("d_state", 4.0, "d_state must be an int, got float 4.0"),
    ("layer", ["s4"], "layer must be a string"),
    ("transform_layers", ["1"], "transform_layers must be a list of block indices"),
    ("layer_options", {1: 2}, "layer_options must be a table"),
    ("patch_size", "4", "patch_size must be an int or None"),
    ("norm_eps", float("nan"), "norm_eps must be a finite number"),
])
def test_every_field_s_type_is_checked(key, value, match):
    """The one check of a config's types, whoever builds it (code, a JSON dict, the CLI's TOML)."""
    with pytest.raises(ValueError, match=re.escape(f"ModelConfig.{match}")):
        ModelConfig(**{key: value})


def test_config_is_frozen_and_a_change_is_checked_again():
    config = ModelConfig(transform_layers=(1, 0), n_layers=2)
    assert config.transform_layers == [1, 0]  # JSON's list
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_state = 3
    with pytest.raises(ValueError, match="outside"):
        dataclasses.replace(config, n_layers=1)


def test_config_unknown_key_is_named():
    with pytest.raises(ValueError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 3})


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_layer_builds_a_classifier(layer):
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer=layer, d_input=1, **TINY))
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run_forward_backward(name, layer):
    torch.manual_seed(0)
    cfg = preset(name, layer=layer, **({"layer_options": {"n_heads": 4}} if layer == "attention" else {}))
    model = build_model(cfg)
    x = torch.rand(2, cfg.d_input, 5, 5)  # a small image: the preset fixes the width, not the length
    logits = model(x)
    logits.logsumexp(-1).sum().backward()
    assert logits.shape == (2, cfg.n_classes) and torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert cfg.d_model == 128 and cfg.n_layers == (2 if name == "mnist" else 4)
    assert cfg.n_classes == (50 if name == "tinyimagenet" else 10)


def test_preset_cifar10_mamba_uses_d_state_16():
    assert preset("cifar10", layer="s6").d_state == 16
    assert preset("cifar10", layer="s4").d_state == 64
    assert preset("mnist", layer="mega").d_state == 16 and preset("mnist", layer="mega", d_state=8).d_state == 8
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("imagenet")


def test_images_become_pixel_tokens_with_a_permute():
    model = build_model(ModelConfig(layer="s4d", d_input=3, **TINY))
    img = torch.rand(2, 3, 4, 5)
    tokens = model.tokens(img)
    assert tokens.shape == (2, 20, 3)
    # the token of pixel (i, j) holds that pixel's three channels (not a scrambled view)
    assert torch.equal(tokens[:, 1 * 5 + 2], img[:, :, 1, 2])
    assert torch.equal(model(img), model(tokens))


def test_bad_input_shapes_raise_clear_errors():
    model = build_model(ModelConfig(layer="s4d", d_input=3, **TINY))
    with pytest.raises(ValueError, match=r"floating inputs in \[0, 1\].*/ 255"):
        model(torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8))
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="d_input=3"):
        model(torch.rand(2, 10, 2))


def test_forward_trace_matches_forward_and_names_every_component():
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="s4d", **TINY)).eval()
    x = torch.rand(2, 1, 3, 3)
    trace = model.forward_trace(x)
    assert torch.allclose(trace["logits"], model(x))
    parts = ("mix", "transform", "project", "residual", "norm")
    expected = ["input", "embedding"] + [f"blocks.{i}.{c}" for i in range(2) for c in parts] + ["pool", "logits"]
    assert list(trace) == expected


@pytest.mark.parametrize("prenorm", [False, True])
def test_prenorm_option(prenorm):
    model = build_model(ModelConfig(layer="s4d", prenorm=prenorm, **TINY)).eval()
    x = torch.rand(2, 9, 1)
    assert torch.allclose(model.forward_trace(x)["logits"], model(x))


class Halve(nn.Module):
    def __init__(self, dim, factor=0.5):
        super().__init__()
        self.factor = factor

    def forward(self, y):
        return y * self.factor


def test_set_transform_updates_slots_and_config():
    register_transform("halve-test", Halve)
    model = build_model(ModelConfig(layer="s6", **TINY))
    model.set_transform("halve-test", {"factor": 0.25}, layers=[1])
    assert isinstance(model.blocks[0].layer.output_transform, nn.Identity)
    assert model.blocks[1].layer.output_transform.factor == 0.25
    assert model.config.transform == "halve-test" and model.config.transform_layers == [1]
    rebuilt = build_model(model.config)
    assert isinstance(rebuilt.blocks[1].layer.output_transform, Halve)
    model.set_transform("identity")
    assert isinstance(model.blocks[1].layer.output_transform, nn.Identity) and model.config.transform == "identity"


def test_unknown_transform_names_the_package():
    with pytest.raises(KeyError, match="unknown output transform"):
        build_model(ModelConfig(layer="s4d", transform="nope", **TINY))


def test_first_layer_is_the_embedding():
    model = build_model(ModelConfig(layer="s4d", **TINY))
    assert model.first_layer is model.embedding


@pytest.mark.parametrize("shape", [(3, 1, 4, 5), (3, 20, 1), (3, 20)])
def test_first_layer_takes_the_model_input_and_runs_once(shape):
    """YOPO's protocol: first_layer(x) is what model(x) computes first, from x itself (images too)."""
    model = build_model(ModelConfig(layer="s4d", **TINY))
    x = torch.rand(shape)
    seen = []
    handle = model.first_layer.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    model(x)
    handle.remove()
    assert len(seen) == 1 and seen[0][0] is x
    torch.testing.assert_close(seen[0][1], model.first_layer(x))
    assert model.first_layer(x).shape == (3, 20, model.config.d_model)


def test_same_seed_same_model():
    torch.manual_seed(3)
    a = build_model(ModelConfig(layer="s5", **TINY))
    torch.manual_seed(3)
    b = build_model(ModelConfig(layer="s5", **TINY))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_transform_plugin_that_fails_to_import_is_named(monkeypatch):
    from importlib.metadata import EntryPoint

    from advssm.ssm_layers import transforms

    broken = EntryPoint(name="broken-test", value="advssm_no_such_module:Thing", group=transforms.ENTRY_POINT_GROUP)
    monkeypatch.setattr(transforms, "_entry_points", lambda: {"broken-test": broken})
    assert "broken-test" in transforms.available_transforms()
    with pytest.raises(KeyError, match="registered by 'advssm_no_such_module:Thing' but failed to import"):
        build_model(ModelConfig(layer="s4d", transform="broken-test", **TINY))
