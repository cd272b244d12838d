"""Mamba-2 everywhere a layer is: --model mamba2 with every training method and AdS, TOML layer options,
the presets' d_state, eval with every attack, analyze (AdS between the gated SSD output and the norm)."""
import json

import pytest
from advssm.adv_train.methods import METHODS
from advssm.ssm_layers import load_checkpoint, preset


def _run(tmp_path, helpers, methods):
    out = tmp_path / "m2"
    toml = tmp_path / "m2.toml"
    toml.write_text('[model]\nlayer = "mamba2"\nlayer_options = { head_dim = 4, n_groups = 2, chunk_size = 16 }\n')
    result = helpers.invoke("run", toml, *helpers.TINY, "--epochs", "1", "--method", ",".join(methods), "--ads", "relu",
                            "--set", "eval.aa=false", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_mamba2_run_eval_and_analyze(tmp_path, helpers):
    out = _run(tmp_path, helpers, ["pgd-at"])
    checkpoint = out / "pgd-at" / "best.safetensors"
    model, _ = load_checkpoint(checkpoint)
    layer = model.blocks[0].layer
    assert model.config.layer == "mamba2" and (layer.nheads, layer.n_groups, layer.chunk_size) == (4, 2, 16)
    assert type(layer.output_transform).__name__ == "AdaptiveScaling"  # AdS in the slot, d_inner wide
    assert layer.output_transform.d_model == layer.d_inner == 16
    evaluated = helpers.invoke("eval", checkpoint, "--attacks", "fgsm,pgd,apgd-ce", "--n", "8", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    analyzed = helpers.invoke("analyze", checkpoint, "--n", "8", "--steps", "2", "--json")
    assert analyzed.exit_code == 0, analyzed.output
    components = json.dumps(json.loads(analyzed.output))
    assert "mix" in components and "transform" in components


@pytest.mark.slow
def test_mamba2_every_method_and_attack(tmp_path, helpers):
    out = _run(tmp_path, helpers, list(METHODS))
    evaluated = helpers.invoke("eval", out / "trades" / "best.safetensors", "--attacks", "square,aa", "--n", "8")
    assert evaluated.exit_code == 0, evaluated.output


def test_mamba2_presets_keep_the_data_sets_d_state():
    """No d_state rule for Mamba-2 (the paper has no Mamba-2 value): each preset's own d_state, unlike S6's 16
    on CIFAR-10; head_dim stays mamba_ssm's 64 (d_model 128: 4 heads)."""
    assert preset("cifar10", layer="mamba2").d_state == 64 and preset("cifar10", layer="s6").d_state == 16
    assert preset("mnist", layer="mamba2").d_state == 32
