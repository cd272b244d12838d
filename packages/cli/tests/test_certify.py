"""``advssm certify`` (smoothing and IBP) and ``advssm analyze``'s internals table, in process through click's
runner on the tiny run and on small checkpoints written here; and IBP's certificates against the attack suite."""
import json

import pytest
import torch
from advssm.ssm_layers import ModelConfig, build_model, save_checkpoint


@pytest.fixture(scope="module")
def s6_checkpoint(tmp_path_factory):
    """An untrained tiny S6 classifier of the digits' shape (8x8 images, one channel, 10 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("s6") / "s6.safetensors"
    save_checkpoint(path, build_model(ModelConfig(layer="s6", d_model=8, d_state=4, n_layers=1, n_classes=10)))
    return path


def test_smoothing_table_json_and_plot(tiny_run, tmp_path, helpers):
    ckpt = tiny_run / "pgd-at" / "best.safetensors"
    out, plot = tmp_path / "cert.json", tmp_path / "cert.png"
    result = helpers.invoke("certify", ckpt, "--method", "smoothing", "--sigma", "0.25", "--n0", "10", "--n", "100",
                            "--n-examples", "6", "--radii", "0,0.1,0.3", "--out", out, "--plot", plot, "--json",
                            "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(out.read_text()) and plot.read_bytes()[:4] == b"\x89PNG"
    assert [row["radius"] for row in data["table"]] == [0.0, 0.1, 0.3] and data["n"] == 6
    accs = [row["certified_acc"] for row in data["table"]]
    assert accs == sorted(accs, reverse=True)
    assert data["forward_passes"] == 6 * 110 and len(data["examples"]) == 6
    for example in data["examples"]:
        assert (example["prediction"] == -1) == (example["radius"] == 0.0)
    # the table is the examples' radii counted
    correct = [e["radius"] for e in data["examples"] if e["prediction"] == e["label"]]
    assert accs[1] == sum(r >= 0.1 for r in correct) / 6
    # same seed, same certificates
    again = helpers.invoke("certify", ckpt, "--n0", "10", "--n", "100", "--n-examples", "6", "--radii", "0,0.1,0.3",
                           "--out", tmp_path / "again.json", "--plot", plot, "--json", "--no-progress")
    assert json.loads(again.stdout)["examples"] == data["examples"]


def test_ibp_table_at_each_eps_and_default_paths(tiny_run, helpers):
    ckpt = tiny_run / "pgd-at" / "last.safetensors"
    result = helpers.invoke("certify", ckpt, "--method", "ibp", "--eps", "0.2,0,0.001", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "| Linf eps | certified accuracy |" in result.output
    data = json.loads((tiny_run / "pgd-at" / "last.certify-ibp.json").read_text())
    assert (tiny_run / "pgd-at" / "last.certify-ibp.png").read_bytes()[:4] == b"\x89PNG"
    assert [row["eps"] for row in data["table"]] == [0.0, 0.001, 0.2]
    accs = [row["certified_acc"] for row in data["table"]]
    # at eps 0 the bound is the model's own margin; wider boxes verify no more
    assert accs == sorted(accs, reverse=True) and accs[0] == pytest.approx(data["clean_acc"])


def test_ibp_refuses_a_selective_layer_and_settings_of_the_other_method(s6_checkpoint, tiny_run, helpers):
    result = helpers.invoke("certify", s6_checkpoint, "--dataset", "digits", "--method", "ibp", "--eps", "0.01",
                            "--no-progress")
    assert result.exit_code == 2 and "layer S6 is selective" in result.output and "--method smoothing" in result.output
    ckpt = tiny_run / "pgd-at" / "best.safetensors"
    result = helpers.invoke("certify", ckpt, "--method", "smoothing", "--eps", "0.1", "--no-progress")
    assert result.exit_code == 2 and "--eps is an ibp setting" in result.output
    result = helpers.invoke("certify", ckpt, "--method", "ibp", "--eps", "1.5", "--no-progress")
    assert result.exit_code == 2 and "--eps must be numbers in [0, 1]" in result.output
    assert "Examples:" in helpers.invoke("certify", "--help").output


def test_analyze_reports_the_internal_attack_beside_the_propagation(s6_checkpoint, tiny_run, tmp_path, helpers):
    result = helpers.invoke("analyze", s6_checkpoint, "--dataset", "digits", "--eps", "0.1", "--n", "4",
                            "--steps", "3", "--plot", tmp_path / "p.png", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["internals"]["rows"]
    assert [(r["block"], r["layer"], r["objective"]) for r in rows] == [(0, "S6", "delta"), (0, "S6", "state")]
    assert all(r["attack_change"] > 0 and r["amplification"] > 0 for r in rows)
    text = helpers.invoke("analyze", tiny_run / "pgd-at" / "best.safetensors", "--n", "4", "--steps", "2",
                          "--plot", tmp_path / "q.png")
    assert text.exit_code == 0 and "| 0 | S4D | n/a | n/a | n/a | n/a |" in text.output
    off = helpers.invoke("analyze", s6_checkpoint, "--dataset", "digits", "--eps", "0.1", "--n", "2", "--steps", "1",
                         "--plot", tmp_path / "r.png", "--no-internals", "--json")
    assert off.exit_code == 0 and "internals" not in json.loads(off.stdout)
