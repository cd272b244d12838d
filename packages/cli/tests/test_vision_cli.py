"""Vision models through the CLI: --patch-size / --scan, [model] keys, grid axes, presets, analyze, info."""
from __future__ import annotations

import json

import pytest
from advssm.cli.errors import ConfigError
from advssm.cli.experiment.spec import PRESETS, load_toml, resolve_experiment

NO_AA = ["--set", "eval.aa=false"]


def test_a_patch_cross2d_run_with_ads_trains_yopo_and_faces_every_autoattack_part(tmp_path, helpers):
    from advssm.adv_train.attacks import ATTACK_NAMES
    from advssm.ssm_layers import load_checkpoint

    out = tmp_path / "run"
    attacks = "[" + ", ".join(f'"{name}"' for name in ATTACK_NAMES) + "]"
    result = helpers.invoke("run", *helpers.TINY, "--patch-size", "2", "--scan", "cross2d", "--epochs", "1",
                            "--method", "yopo,pgd-at", "--ads", "relu", "--set", "eval.aa_version=custom", "--set",
                            f"eval.aa_attacks={attacks}", "--out", out)
    assert result.exit_code == 0, result.output
    model, _ = load_checkpoint(out / "yopo" / "best.safetensors")
    assert (model.config.patch_size, model.config.scan, model.config.transform) == (2, "cross2d", "ads")
    assert len(model.blocks[0].layer.output_transform.parts) == 4   # one AdS per direction, reloaded
    final = json.loads((out / "yopo" / "final_eval.json").read_text())
    assert final["stages"]["best"]["n"] == 8
    # the digits' 8x8 images in 2x2 patches: 16 tokens; S4D is LTI, but its bound does not hold for cross2d
    result = helpers.invoke("analyze", out / "pgd-at" / "best.safetensors", "--n", "8", "--steps", "2", "--plot",
                            tmp_path / "p.png", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["meta"]["lti_bound"].startswith("not applicable: the layers are LTI but the cross2d scan")
    assert all(row["bound"] is None for row in report["rows"])


def test_a_causal_patch_model_keeps_the_lti_bound(tmp_path, helpers):
    out = tmp_path / "run"
    result = helpers.invoke("run", *helpers.TINY, *NO_AA, "--patch-size", "4", "--epochs", "1", "--method",
                            "standard", "--out", out)
    assert result.exit_code == 0, result.output
    result = helpers.invoke("analyze", out / "standard" / "best.safetensors", "--n", "8", "--steps", "2", "--plot",
                            tmp_path / "p.png", "--json")
    report = json.loads(result.output)
    ratios = [row["bound_ratio"] for row in report["rows"] if row["component"] == "mix"]
    assert "lti_bound" not in report["meta"] and ratios and all(r <= 1 + 1e-6 for r in ratios)


def test_patch_size_and_scan_are_grid_axes_with_readable_cell_names():
    spec = resolve_experiment({"grid": {"patch_size": ["none", 2], "scan": ["causal", "bidirectional"],
                                        "method": ["standard"]}})
    assert [c.name for c in spec.cells()] == ["pixels-causal-standard", "pixels-bidirectional-standard",
                                             "patch2-causal-standard", "patch2-bidirectional-standard"]
    assert [(c.model.patch_size, c.model.scan) for c in spec.cells()] == [
        (None, "causal"), (None, "bidirectional"), (2, "causal"), (2, "bidirectional")]
    again = resolve_experiment(spec.to_dict())
    assert again == spec
    with pytest.raises(ConfigError, match="grid.patch_size"):
        resolve_experiment({"grid": {"patch_size": ["four"]}})


def test_model_keys_from_toml_with_none_and_flags(tmp_path, helpers):
    path = tmp_path / "exp.toml"
    path.write_text('[model]\npatch_size = "none"\nscan = "bidirectional"\ncls_token = true\n')
    spec = resolve_experiment(load_toml(path))
    assert spec.model.patch_size is None and spec.model.scan == "bidirectional" and spec.model.cls_token
    assert 'patch_size = "none"' in spec.to_toml()
    flagged = helpers.invoke("run", path, "--patch-size", "4", "--scan", "cross2d", "--dry-run", "--json")
    assert flagged.exit_code == 0, flagged.output
    model = json.loads(flagged.output)["model"]
    assert (model["patch_size"], model["scan"]) == (4, "cross2d")
    back = helpers.invoke("run", path, "--patch-size", "none", "--dry-run", "--json")
    assert json.loads(back.output)["model"]["patch_size"] == "none"
    bad = helpers.invoke("run", "--patch-size", "big", "--dry-run")
    assert bad.exit_code == 2 and "neither a patch size" in bad.output
    bad = helpers.invoke("run", "--scan", "zigzag", "--dry-run")
    assert bad.exit_code == 2 and "cross2d" in bad.output
    with pytest.raises(ConfigError, match="pos_embed needs model.image_size"):
        resolve_experiment({"model": {"pos_embed": True}})


def test_the_vision_presets_keep_the_papers_protocol():
    for family in ("vim", "vmamba"):
        for dataset in ("cifar10", "tinyimagenet"):
            name = f"{family}-{dataset}"
            spec = resolve_experiment({"preset": name})
            paper = resolve_experiment({"preset": f"paper-{dataset}"})
            assert spec.train == paper.train and spec.data == paper.data and name in PRESETS
            cell = spec.cells()[0]
            assert cell.model.scan == ("bidirectional" if family == "vim" else "cross2d")
            assert cell.model.patch_size and cell.model.d_state == 16


def test_info_lists_the_scans_and_presets(helpers):
    result = helpers.invoke("info", "--json")
    models = json.loads(result.output)["models"]
    assert models["scans"] == ["causal", "bidirectional", "cross2d"] and "vmamba-cifar10" in models["presets"]


@pytest.mark.slow
def test_every_method_trains_a_bidirectional_patch_model(tmp_path, helpers):
    from advssm.adv_train.methods import METHODS

    out = tmp_path / "grid"
    result = helpers.invoke("run", *helpers.TINY, *NO_AA, "--patch-size", "2", "--scan", "bidirectional", "--set",
                            "model.cls_token=true", "--epochs", "1", "--method", ",".join(METHODS), "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if (p / "cell.json").is_file()) == sorted(METHODS)
