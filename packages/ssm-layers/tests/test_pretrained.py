"""Pretrained Mamba / Mamba-2 folders (transformers' save_pretrained, mamba_ssm's layout) as advssm backbones:
the same last hidden state as transformers' MambaModel / Mamba2Model for the same inputs_embeds.

transformers computes its RMSNorms (and Mamba-2's scan) in float32 even in a float64 model, so agreement is to
float32 rounding: within 1e-5 of the hidden states' scale. Tiny random configs, written here: no download.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from advssm.ssm_layers.pretrained import (
    PretrainedConfigError,
    box_inputs,
    hidden_states,
    load_pretrained,
    read_spec,
)
from safetensors.torch import save_file
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

TOL = 1e-5  # of the hidden states' scale


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _mamba(tmp_path, **overrides):
    config = MambaConfig(**{"hidden_size": 16, "state_size": 4, "num_hidden_layers": 2, "vocab_size": 30,
                            "conv_kernel": 3, **overrides})
    torch.manual_seed(0)
    lm = _perturb(MambaForCausalLM(config)).eval()
    lm.save_pretrained(tmp_path / "hf")
    return lm, tmp_path / "hf"


def _mamba2(tmp_path, **overrides):
    config = Mamba2Config(**{"hidden_size": 16, "num_heads": 4, "head_dim": 8, "n_groups": 2, "state_size": 4,
                             "num_hidden_layers": 2, "vocab_size": 30, "chunk_size": 8, **overrides})
    torch.manual_seed(0)
    lm = _perturb(Mamba2ForCausalLM(config)).eval()
    lm.save_pretrained(tmp_path / "hf")
    return lm, tmp_path / "hf"


def _assert_same_hidden_states(lm, folder, L=19, **kwargs):
    pretrained = load_pretrained(folder, n_classes=3, dtype=torch.float64, **kwargs)
    model = pretrained.model
    x = torch.rand(2, L, model.config.d_input, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs = lm.backbone.double()(inputs_embeds=model.embedding(x)).last_hidden_state
    ours = hidden_states(model, x)
    err, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    assert err <= TOL * scale, f"max error {err:.3g} > {TOL:g} x scale {scale:.3g}"
    assert model(x).shape == (2, 3)
    return pretrained


def test_transformers_mamba_folder_gives_mamba_models_hidden_states(tmp_path):
    lm, folder = _mamba(tmp_path)
    pretrained = _assert_same_hidden_states(lm, folder)
    assert pretrained.spec.layer == "s6" and pretrained.spec.source == "transformers"


def test_transformers_mamba2_folder_gives_mamba2_models_hidden_states(tmp_path):
    lm, folder = _mamba2(tmp_path)
    pretrained = _assert_same_hidden_states(lm, folder)
    assert pretrained.spec.layer == "mamba2"
    assert pretrained.model.config.layer_options["n_groups"] == 2


def test_transformers_4_mamba2_config_keys(tmp_path):
    """A Mamba-2 config.json as transformers 4.x wrote it (norm_before_gate, rms_norm, which its mixer never read;
    Infinity as a bare JSON literal; torch_dtype) maps to the same model."""
    lm, folder = _mamba2(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(norm_before_gate=True, rms_norm=True, time_step_scale=1.0, time_step_init_scheme="random",
                  torch_dtype="float32", time_step_limit=[0.0, math.inf])
    (folder / "config.json").write_text(json.dumps(config))  # json writes inf as Infinity
    assert "Infinity" in (folder / "config.json").read_text()
    _assert_same_hidden_states(lm, folder)


def test_token_ids_through_the_box_give_the_language_models_hidden_states(tmp_path):
    """inputs(ids) is in [0, 1], the embedding maps it back onto the token embeddings, and the hidden states
    are the ones transformers computes from the token ids themselves; "cube" is one common range."""
    lm, folder = _mamba2(tmp_path)
    ids = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(2))
    for box in ("coordinate", "cube"):
        pretrained = load_pretrained(folder, dtype=torch.float64, box=box)
        x = pretrained.inputs(ids)
        assert 0 <= x.min() and x.max() <= 1
        table = lm.backbone.embeddings.weight.double()
        torch.testing.assert_close(pretrained.model.embedding(x), table[ids], rtol=1e-12, atol=1e-12)
        theirs = lm.backbone.double()(input_ids=ids).last_hidden_state
        ours = hidden_states(pretrained.model, x)
        assert (ours - theirs).abs().max() <= TOL * theirs.abs().max()
    scale = torch.diagonal(pretrained.model.embedding.weight)
    assert torch.all(scale == scale[0])  # cube: the same range in every coordinate
    torch.testing.assert_close(box_inputs(pretrained.model, table[ids]), x)


def _mamba_ssm_folder(lm, folder, ssm_cfg: dict, weights: str, **top):
    """lm's weights in mamba_ssm's layout: backbone.embedding.weight (vocabulary padded to a multiple of 8)."""
    folder.mkdir()
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
             for k, v in lm.state_dict().items()}
    emb = state["backbone.embedding.weight"]
    state["backbone.embedding.weight"] = torch.cat([emb, torch.full((2, emb.shape[1]), 99.0)])  # padding rows
    state["lm_head.weight"] = state["backbone.embedding.weight"].clone()
    config = {"d_model": lm.config.hidden_size, "n_layer": lm.config.num_hidden_layers, "vocab_size": 30,
              "ssm_cfg": ssm_cfg, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": 8, "tie_embeddings": True, **top}
    (folder / "config.json").write_text(json.dumps(config))
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


def test_mamba_ssm_folders(tmp_path):
    """mamba_ssm's config.json and weight names: Mamba1 from pytorch_model.bin (read with weights_only),
    Mamba2 from safetensors; padding rows of the embedding table stay out of the box."""
    lm, _ = _mamba(tmp_path / "a")
    folder = _mamba_ssm_folder(lm, tmp_path / "ms1", {"d_state": 4, "d_conv": 3}, "bin")
    pretrained = _assert_same_hidden_states(lm, folder)
    assert pretrained.spec.source == "mamba_ssm" and pretrained.token_embeddings.shape == (30, 16)
    assert pretrained.model.embedding.bias.max() < 99  # the padding rows are not part of the box
    lm2, _ = _mamba2(tmp_path / "b")
    folder = _mamba_ssm_folder(lm2, tmp_path / "ms2", {"layer": "Mamba2", "d_state": 4, "headdim": 8, "ngroups": 2,
                                                       "chunk_size": 8, "dt_limit": [0.0, math.inf]}, "safetensors")
    assert _assert_same_hidden_states(lm2, folder).spec.layer == "mamba2"


@pytest.mark.parametrize("change, message", [
    ({"hidden_dropout": 0.1}, "unknown config key(s) hidden_dropout"),
    ({"model_type": "jamba"}, "model_type 'jamba' is not a layer kind advssm has"),
    ({"use_bias": True}, "use_bias = true is not supported"),
    ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported'),
])
def test_transformers_configs_it_cannot_map_are_one_clear_error(tmp_path, change, message):
    _, folder = _mamba(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(PretrainedConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pretrained(folder)


@pytest.mark.parametrize("config, message", [
    ({"d_model": 16, "n_layer": 2, "vocab_size": 30, "d_intermediate": 64}, "adds an MLP to every block"),
    ({"d_model": 16, "n_layer": 2, "vocab_size": 30, "attn_layer_idx": [1]}, "attention layers"),
    ({"d_model": 16, "n_layer": 2, "vocab_size": 30, "ssm_cfg": {"layer": "Mamba3"}}, "'Mamba3' is not a layer kind"),
    ({"d_model": 16, "n_layer": 2, "vocab_size": 30, "ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}},
     "norm_before_gate = true is not supported"),
    ({"d_model": 16, "n_layer": 2, "vocab_size": 30, "ssm_cfg": {"d_state": 4, "dt_scaling": 2}},
     "unknown config key.s. ssm_cfg.dt_scaling"),
])
def test_mamba_ssm_configs_it_cannot_map_are_one_clear_error(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedConfigError, match=message):
        read_spec(tmp_path)


def test_missing_files_and_foreign_tensors(tmp_path):
    with pytest.raises(PretrainedConfigError, match="no config.json"):
        load_pretrained(tmp_path)
    lm, folder = _mamba(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(PretrainedConfigError, match="no weights: expected model.safetensors or pytorch_model.bin"):
        load_pretrained(folder)
    state = {k: v.detach().clone() for k, v in lm.state_dict().items() if k != "lm_head.weight"}
    state["backbone.layers.0.mlp.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(PretrainedConfigError, match="unexpected tensor 'backbone.layers.0.mlp.weight'"):
        load_pretrained(folder)
