"""Robustness curves: ``advssm eval CHECKPOINT... --eps e1,e2,...``."""
import json

from advssm.cli.results import curves


def _copy(tiny_run, tmp_path, cell):
    folder = tmp_path / cell
    folder.mkdir()
    ckpt = folder / "best.safetensors"
    ckpt.write_bytes((tiny_run / cell / "best.safetensors").read_bytes())
    return ckpt


def test_one_call_evaluates_every_eps_on_the_same_examples(tiny_run, tmp_path, helpers):
    ckpt = _copy(tiny_run, tmp_path, "pgd-at")
    args = ["eval", ckpt, "--eps", "0.05,0.2", "--attacks", "fgsm,pgd", "--steps", "2", "--batch-size", "4",
            "--json", "--no-progress"]
    result = helpers.invoke(*args)
    assert result.exit_code == 0, result.output
    (curve,) = json.loads(result.stdout)["curves"]
    assert [p["eps"] for p in curve["points"]] == [0.05, 0.2] and curve["attacks"] == ["fgsm", "pgd-2"]
    # one evaluation: one clean pass, each example's record holds every attack at every eps
    records = [json.loads(line) for line in (tmp_path / "pgd-at" / "best.eval.jsonl").read_text().splitlines()]
    assert len(records) == curve["n"] == 8
    assert set(records[0]["robust"]) == {"fgsm@0.05", "fgsm@0.2", "pgd-2@0.05", "pgd-2@0.2"}
    for point in curve["points"]:
        names = [f"{a}@{point['eps']:g}" for a in curve["attacks"]]
        assert point["worst_acc"] == sum(r["clean_correct"] and all(r["robust"][k] for k in names)
                                         for r in records) / 8
        assert point["worst_acc"] <= min(point["robust_acc"].values()) <= curve["clean_acc"]
    # FGSM is deterministic: each point equals a single-eps evaluation at that eps
    for point in curve["points"]:
        single = helpers.invoke("eval", ckpt, "--eps", str(point["eps"]), "--attacks", "fgsm", "--json",
                                "--records", tmp_path / "single.jsonl", "--no-progress")
        data = json.loads(single.stdout)
        assert data["clean_acc"] == curve["clean_acc"] and data["robust_acc"]["fgsm"] == point["robust_acc"]["fgsm"]
    stored = json.loads((tmp_path / "pgd-at" / "best.curve.json").read_text())["curves"]
    assert stored[0]["points"] == curve["points"]
    table = (tmp_path / "pgd-at" / "best.curve.md").read_text()
    assert table.splitlines()[0] == "| eps | fgsm | pgd-2 | worst |" and "| 0.2 |" in table
    assert (tmp_path / "pgd-at" / "best.curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cut_curve_resumes_to_the_same_numbers(tiny_run, tmp_path, helpers):
    ckpt = _copy(tiny_run, tmp_path, "pgd-at")
    args = ["eval", ckpt, "--eps", "0.05,0.1", "--attacks", "pgd", "--steps", "2", "--batch-size", "4", "--json",
            "--no-progress"]
    whole = json.loads(helpers.invoke(*args).stdout)["curves"][0]
    records = tmp_path / "pgd-at" / "best.eval.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:4]) + "\n")  # cut after the first batch of 4
    resumed = helpers.invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["curves"][0]["points"] == whole["points"]
    assert records.read_text().splitlines() == lines
    # the records of a curve hold its eps: resuming with other eps is refused, naming both
    other = helpers.invoke(*args[:3], "0.05,0.3", *args[4:], "--resume")
    assert other.exit_code != 0 and "pgd-2@0.3" in other.output, other.output


def test_several_checkpoints_on_one_plot(tiny_run, tmp_path, helpers):
    a, b = _copy(tiny_run, tmp_path, "standard"), _copy(tiny_run, tmp_path, "pgd-at")
    out = tmp_path / "cmp"
    result = helpers.invoke("eval", a, b, "--eps", "0.05,0.2", "--attacks", "fgsm", "--curves-out", out,
                            "--no-progress")
    assert result.exit_code == 0, result.output
    assert "| eps | standard/best fgsm | pgd-at/best fgsm |" in result.output
    stored = json.loads((out / "curves.json").read_text())["curves"]
    assert [c["label"] for c in stored] == ["standard/best", "pgd-at/best"]
    assert (out / "curves.png").stat().st_size > 0 and (out / "curves.md").is_file()
    assert (tmp_path / "standard" / "best.curve.json").is_file() and (tmp_path / "pgd-at" / "best.curve.json").is_file()
    found, problems = curves.read_curves(out)
    assert [c["label"] for c in found] == ["standard/best", "pgd-at/best"] and problems == []
    # one records file cannot hold two checkpoints
    again = helpers.invoke("eval", a, b, "--eps", "0.1", "--records", tmp_path / "r.jsonl")
    assert again.exit_code == 2 and "--records names one file" in again.output


def test_eps_list_errors(tiny_run, helpers):
    ckpt = tiny_run / "pgd-at" / "best.safetensors"
    for value, message in (("0.1,abc", "'abc' is not a number"), ("0.1,0.1", "0.1 is listed twice"),
                           ("0.1,2", "2 is not in the range")):
        result = helpers.invoke("eval", ckpt, "--eps", value)
        assert result.exit_code == 2 and message in result.output and "--eps" in result.output, result.output


def test_labels_and_table():
    assert curves.labels(["/r/a/best.safetensors", "/r/b/best.safetensors"]) == ["a/best", "b/best"]
    assert curves.labels(["/r/a/best.safetensors", "/r/a/last.safetensors"]) == ["best", "last"]
    one = {"label": "a", "clean_acc": 0.5, "attacks": ["pgd"], "points": [
        {"eps": 0.1, "robust_acc": {"pgd": 0.25}, "worst_acc": 0.25}]}
    assert curves.curve_table([one]).splitlines() == ["| eps | pgd |", "|---|---|", "| 0 | 50.00 |", "| 0.1 | 25.00 |"]
