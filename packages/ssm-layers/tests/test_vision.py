"""Vision models: patch tokens, position embedding, class token, presets, checkpoints old and new."""
from __future__ import annotations

import json

import pytest
import torch
from advssm.ssm_layers import ModelConfig, build_model, load_checkpoint, preset, save_checkpoint
from advssm.ssm_layers.model import VISION_PRESETS, PatchEmbedding, PixelEmbedding
from safetensors.torch import save_file

TINY = dict(d_model=8, d_state=4, n_layers=1)
NEW_KEYS = ("patch_size", "image_size", "pos_embed", "cls_token", "scan")


def test_a_32x32_image_with_patch_4_is_64_tokens_of_its_patches_row_by_row():
    emb = PatchEmbedding(channels=3, patch_size=4, d_model=8)
    x = torch.rand(2, 3, 32, 32)
    tokens = emb.tokens(x)
    assert tokens.shape == (2, 64, 48) and emb.grid(x) == (8, 8) and emb(x).shape == (2, 64, 8)
    for row, col in ((0, 0), (0, 7), (3, 5), (7, 7)):
        patch = x[:, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4].reshape(2, -1)  # (channel, row, column)
        assert torch.equal(tokens[:, 8 * row + col], patch)
    # the same map as a stride-p convolution with the Linear's weights (ViT's patch embedding)
    conv = torch.nn.functional.conv2d(x, emb.weight.view(8, 3, 4, 4), emb.bias, stride=4)
    torch.testing.assert_close(emb(x), conv.flatten(2).transpose(1, 2))


def test_patch_size_errors_name_the_problem_and_the_fix():
    model = build_model(ModelConfig(d_input=3, patch_size=5, **TINY))
    with pytest.raises(ValueError, match="patch_size=5 does not divide the 32x32 images"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="needs images .* set model.patch_size to none"):
        model(torch.rand(1, 16, 3))
    with pytest.raises(ValueError, match="does not divide ModelConfig.image_size 32"):
        ModelConfig(patch_size=5, image_size=32)
    with pytest.raises(ValueError, match="pos_embed needs ModelConfig.image_size"):
        ModelConfig(pos_embed=True)
    with pytest.raises(ValueError, match="patch_size must be a positive int or None"):
        ModelConfig(patch_size=0)
    with pytest.raises(ValueError, match="cls_token must be true or false"):
        ModelConfig(cls_token=1)
    model = build_model(ModelConfig(d_input=3, patch_size=4, pos_embed=True, image_size=32, **TINY))
    with pytest.raises(ValueError, match="position embedding has 64 tokens .* gives 16; set model.image_size"):
        model(torch.rand(1, 3, 16, 16))


def test_pixel_models_are_unchanged_by_default():
    config = ModelConfig(**TINY)
    assert (config.patch_size, config.pos_embed, config.cls_token, config.scan) == (None, False, False, "causal")
    model = build_model(config)
    assert type(model.embedding) is PixelEmbedding and model.cls_token is None and model.pos_embed is None
    assert sorted(k for k in model.state_dict() if not k.startswith("blocks.")) == [
        "embed_norm.bias", "embed_norm.weight", "embedding.bias", "embedding.weight", "head.bias", "head.weight"]


def test_the_class_token_comes_after_the_patches_and_feeds_the_head():
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_input=1, patch_size=2, cls_token=True, pos_embed=True, image_size=8,
                                    **TINY)).eval()
    x = torch.rand(3, 1, 8, 8)
    trace = model.forward_trace(x)
    assert trace["input"].shape == (3, 16, 4) and trace["embedding"].shape == (3, 17, 8)
    torch.testing.assert_close(trace["embedding"][:, -1], (model.cls_token + model.pos_embed[:, -1])[0].expand(3, -1))
    torch.testing.assert_close(trace["pool"], trace["blocks.0.norm"][:, -1])
    mean = build_model(ModelConfig(d_input=1, patch_size=2, **TINY)).eval().forward_trace(x)
    torch.testing.assert_close(mean["pool"], mean["blocks.0.norm"].mean(1))


def test_the_first_layer_is_the_patch_embedding_and_runs_once_on_the_input():
    """YOPO's protocol: model.first_layer takes the model's input and its output is used once."""
    model = build_model(ModelConfig(d_input=3, patch_size=2, cls_token=True, scan="cross2d", **TINY))
    calls = []
    model.first_layer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    model(torch.rand(2, 3, 4, 4))
    assert model.first_layer is model.embedding and calls == [torch.Size([2, 3, 4, 4])]


@pytest.mark.parametrize("scan", ["causal", "bidirectional", "cross2d"])
def test_vision_models_round_trip_through_a_checkpoint(tmp_path, scan):
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_input=3, patch_size=2, pos_embed=True, cls_token=True, image_size=4,
                                    scan=scan, transform="identity", **TINY)).eval()
    save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(loaded(x), model(x)) and meta["model_config"]["scan"] == scan


def test_checkpoints_written_before_the_vision_keys_still_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY)).eval()
    old_config = {k: v for k, v in model.config.to_dict().items() if k not in NEW_KEYS}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={
        "format": "advssm-checkpoint", "format_version": "1", "model_config": json.dumps(old_config)})
    loaded, _ = load_checkpoint(path)
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded(x), model(x)) and loaded.config.scan == "causal" and loaded.config.patch_size is None


@pytest.mark.parametrize("name", sorted(VISION_PRESETS))
def test_the_vision_presets_build_and_classify_their_images(name):
    config = preset(name, d_model=8, n_layers=1)   # the preset's tokens and scan, at toy width
    side = config.image_size
    assert VISION_PRESETS[name]["scan"] in ("bidirectional", "cross2d") and side % config.patch_size == 0
    logits = build_model(config)(torch.rand(1, 3, side, side))
    assert logits.shape == (1, config.n_classes)
