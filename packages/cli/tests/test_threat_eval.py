"""``advssm eval`` with a threat model: --norm, --threat (a masked threat model named in the records and the
RobustBench record) and --position-sweep (accuracy against where the attacked window sits)."""
import json

import pytest


def _copy(tiny_run, tmp_path, cell="pgd-at"):
    folder = tmp_path / cell
    folder.mkdir(exist_ok=True)
    ckpt = folder / "best.safetensors"
    ckpt.write_bytes((tiny_run / cell / "best.safetensors").read_bytes())
    return ckpt


def _eval(helpers, ckpt, *args):
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--eps", "0.3", "--json", "--no-progress", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_threat_model_is_applied_and_named(tiny_run, tmp_path, helpers):
    ckpt = _copy(tiny_run, tmp_path)
    full = _eval(helpers, ckpt, "--records", tmp_path / "full.jsonl")
    n_pixels = 8 * 8  # the tiny run's 8 x 8 digits: every position of the raster order
    everything = _eval(helpers, ckpt, "--threat", f"prefix:{n_pixels}", "--records", tmp_path / "all.jsonl")
    small = _eval(helpers, ckpt, "--threat", "window:30:4", "--records", tmp_path / "small.jsonl")
    assert full["threat_model"] == "full" and "threat_model" not in full["attacks"]["fgsm"]
    assert everything["robust_acc"] == full["robust_acc"], "a mask over every position is the full threat model"
    assert small["threat_model"] == "window(start=30,length=4)"
    assert small["attacks"]["fgsm"]["threat_model"] == "window(start=30,length=4)"
    assert small["robustbench"]["threat_model"] == "Linf:window(start=30,length=4)"
    assert json.loads((tmp_path / "pgd-at" / "best.robustbench.json").read_text())["threat_model"].startswith("Linf:")


def test_norms(tiny_run, tmp_path, helpers):
    ckpt = _copy(tiny_run, tmp_path)
    for norm, eps in (("L2", "2"), ("L1", "8")):
        data = _eval(helpers, ckpt, "--norm", norm, "--eps", eps, "--attacks", "pgd,apgd-ce", "--steps", "3",
                     "--records", tmp_path / f"{norm}.jsonl")
        assert data["norm"] == norm and data["robustbench"]["threat_model"] == norm
        assert {a["norm"] for a in data["attacks"].values()} == {norm}
        records = [json.loads(line) for line in (tmp_path / f"{norm}.jsonl").read_text().splitlines()]
        assert all(r["perturbation_norm"] <= float(eps) * (1 + 1e-5) for r in records if r["broken_by"])


def test_position_sweep_matches_single_window_evaluations(tiny_run, tmp_path, helpers):
    ckpt = _copy(tiny_run, tmp_path)
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm,pgd", "--steps", "2", "--eps", "0.3",
                            "--position-sweep", "30:25", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    study = json.loads(result.stdout)["positions"]
    assert [p["start"] for p in study["points"]] == [0, 25, 34]  # the last window ends at pixel 63
    assert study["attacks"] == ["fgsm", "pgd-2"] and study["length"] == 30 and study["stride"] == 25
    for point in study["points"]:
        assert point["worst_acc"] <= min(point["robust_acc"].values()) <= study["clean_acc"]
        single = _eval(helpers, ckpt, "--threat", f"window:{point['start']}:30", "--records", tmp_path / "one.jsonl")
        assert single["robust_acc"]["fgsm"] == point["robust_acc"]["fgsm"]  # FGSM is deterministic
    stem = tmp_path / "pgd-at" / "best.positions"
    assert json.loads(stem.with_suffix(".positions.json").read_text())["points"] == study["points"]
    table = stem.with_suffix(".positions.md").read_text().splitlines()
    assert table[0] == "| positions | clean | fgsm | pgd-2 | worst |" and table[2].startswith("| 0..29 |")
    assert stem.with_suffix(".positions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--eps", "0.3", "--position-sweep", "32",
                          "--no-progress")
    assert text.exit_code == 0 and "| 32..63 |" in text.output, text.output


@pytest.mark.parametrize(("args", "message"), [
    (["--threat", "box:3"], "unknown threat model 'box:3'; write one of window:START:LEN"),
    (["--threat", "window:3"], "write window:START:LEN with non-negative integers"),
    (["--threat", "window:60:10"], "--threat: window(start=60,length=10) does not fit an input of 64 positions"),
    (["--threat", "patch:6:6:4"], "does not fit a 8 x 8 image"),
    (["--norm", "L2"], "--norm L2 needs --eps"),
    (["--eps", "2"], "2 is not in the range 0<x<=1"),
    (["--position-sweep", "0"], "write LEN or LEN:STRIDE with positive integers"),
    (["--position-sweep", "10", "--threat", "prefix:3"], "drop --threat"),
    (["--position-sweep", "90"], "a window of 90 positions does not fit an input of 64"),
])
def test_errors_name_the_problem(tiny_run, tmp_path, helpers, args, message):
    ckpt = _copy(tiny_run, tmp_path)
    result = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--no-progress", *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
