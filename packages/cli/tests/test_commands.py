"""eval, sweep, report, analyze, info and the exit-code contract, in process through click's runner."""
import importlib
import json

from advssm.cli.experiment import cell_folder, run_folder

# the package exports the command objects under the modules' names, so fetch the module itself
info_command = importlib.import_module("advssm.cli.commands.info")


def test_sweep_runs_cells_then_skips_finished(tmp_path, helpers):
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "zoo"\n[grid]\nmethod = ["standard"]\nads = ["none", "relu"]\n'
                    '[train]\nepochs = 1\n')
    out = tmp_path / "zoo"
    args = ["sweep", grid, "--out", out, "--no-progress", "--set", "data.train_size=32", "--set", "data.test_size=16",
            "--set", "model.d_model=8", "--set", "model.d_state=4", "--set", "model.n_layers=1"]
    result = helpers.invoke(*args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run_folder.find_cells(out)) == ["standard-none", "standard-relu"]
    from advssm.ssm_layers import load_checkpoint

    model, _ = load_checkpoint(out / "standard-relu" / "last.safetensors")
    assert model.config.transform == "ads" and model.config.transform_options["activation"] == "relu"
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in run_folder.find_cells(out)}
    result = helpers.invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    assert "standard-none: finished, skipped" in result.output and "standard-relu: finished, skipped" in result.output
    assert before == {p: (p / "summary.json").stat().st_mtime_ns for p in run_folder.find_cells(out)}
    table = (out / "report.md").read_text()
    assert "| standard-none |" in table and "| standard-relu |" in table


def test_report_compares_runs(tiny_run, tmp_path, helpers):
    result = helpers.invoke("report", tiny_run, tiny_run / "pgd-at", "--out", tmp_path / "cmp", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["cells"]) == {"tiny/standard", "tiny/pgd-at", "tiny/pgd-at #2"}
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert text.count("| tiny/") == 3 and (tmp_path / "cmp" / "accuracy.png").is_file()
    assert data["cells"]["tiny/pgd-at"] == cell_folder.read_summary(tiny_run / "pgd-at")


def test_report_in_place_keeps_the_run_configuration(tiny_run, tmp_path, helpers):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    before = (run / "report.md").read_text()
    assert "## Configuration" in before
    result = helpers.invoke("report", run)
    assert result.exit_code == 0, result.output
    after = (run / "report.md").read_text()
    assert after.split("## Configuration")[1] == before.split("## Configuration")[1]


def test_report_of_a_folder_without_runs(tmp_path, helpers):
    result = helpers.invoke("report", tmp_path)
    assert result.exit_code == 2 and "has no finished cell" in result.output


def test_analyze_table_and_plot(tiny_run, tmp_path, helpers):
    plot = tmp_path / "prop.png"
    result = helpers.invoke("analyze", tiny_run / "pgd-at" / "best.safetensors", "--n", "8", "--steps", "2",
                            "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["n_examples"] == 8 and plot.read_bytes()[:4] == b"\x89PNG"
    assert data["perturbation_linf"] <= 0.1 + 1e-6  # the run's eps, read from its config.toml


def test_info_json(helpers):
    result = helpers.invoke("info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["versions"]["advssm-cli"] and data["versions"]["torch"] and "device" in data


def test_every_command_has_help_with_examples(helpers):
    for command in ("run", "eval", "sweep", "report", "analyze", "bench", "info"):
        result = helpers.invoke(command, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output, command


def test_eval_defaults_to_the_runs_examples_and_settings(tiny_run, helpers):
    ckpt = tiny_run / "pgd-at" / "last.safetensors"
    result = helpers.invoke("eval", ckpt, "--attacks", "pgd,fgsm", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # progress bars go to stderr
    summary = cell_folder.read_summary(tiny_run / "pgd-at")
    # the examples of the run's table row (the final evaluation's first 8, where clean, PGD and AA are all measured
    # since issue 11; before, the row mixed 32 and 8) and its eps: the clean accuracy is the run's own number
    assert data["n"] == 8 and data["eps"] == 0.1 and data["clean_acc"] == summary["last"]["clean_acc"]
    assert set(data["robust_acc"]) == {"pgd-2", "fgsm"}
    assert data["worst_acc"] <= min(data["robust_acc"].values()) <= data["clean_acc"]
    text = helpers.invoke("eval", ckpt, "--attacks", "pgd", "--steps", "1", "--n", "8", "--no-progress")
    assert text.exit_code == 0 and "n 8" in text.output and "pgd-1" in text.output and "clean" in text.output


def test_eval_errors(tiny_run, tmp_path, helpers):
    ckpt = tiny_run / "pgd-at" / "best.safetensors"
    result = helpers.invoke("eval", ckpt, "--attacks", "pgd,cw")
    assert result.exit_code == 2 and "unknown attack 'cw'" in result.output
    copied = tmp_path / "copied.safetensors"
    copied.write_bytes(ckpt.read_bytes())  # a checkpoint away from its run folder keeps its protocol (issue 11)
    result = helpers.invoke("eval", copied, "--attacks", "pgd", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 8 and json.loads(result.stdout)["eps"] == 0.1
    from advssm.ssm_layers import load_checkpoint, save_checkpoint

    loose = tmp_path / "model.safetensors"
    save_checkpoint(loose, load_checkpoint(ckpt)[0])  # a checkpoint that records no run
    result = helpers.invoke("eval", loose, "--attacks", "pgd")
    assert result.exit_code == 2 and "pass --dataset" in result.output
    result = helpers.invoke("eval", loose, "--attacks", "pgd", "--dataset", "digits", "--eps", "0.05", "--n", "4",
                            "--steps", "1", "--json", "--no-progress")
    assert result.exit_code == 0 and json.loads(result.stdout)["eps"] == 0.05
    assert helpers.invoke("eval", tmp_path / "missing.safetensors").exit_code == 2


def test_ctrl_c_in_any_command_exits_130(monkeypatch, helpers):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(info_command, "collect", interrupted)
    result = helpers.invoke("info")
    assert result.exit_code == 130 and "interrupted" in result.output and "Traceback" not in result.output


def test_info_text_lists_backends_per_op(helpers):
    result = helpers.invoke("info")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "backends (per op):" in lines
    assert any(line.split()[:3] == ["selective_scan", "reference,", "torch"] for line in lines)


def test_eval_runs_in_the_runs_precision_unless_told(tmp_path, helpers):
    """A bf16 run's checkpoint is evaluated under bf16 autocast by default, as its final evaluation was (it was
    evaluated in fp32 whatever the run used), so eval reproduces the run's number; --precision overrides."""
    out = tmp_path / "bf16"
    result = helpers.invoke("run", *helpers.TINY, "--epochs", "1", "--method", "standard", "--precision", "bf16",
                            "--out", out)
    assert result.exit_code == 0, result.output
    ckpt = out / "standard" / "last.safetensors"
    summary = cell_folder.read_summary(out / "standard")
    data = json.loads(helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--json", "--no-progress").stdout)
    assert data["precision"] == "bf16" and data["clean_acc"] == summary["last"]["clean_acc"]
    text = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--precision", "fp32", "--no-progress")
    assert text.exit_code == 0 and "precision" not in text.output.splitlines()[0]
    bad = helpers.invoke("eval", ckpt, "--attacks", "fgsm", "--precision", "fp16", "--device", "cpu")
    assert bad.exit_code == 2 and "--precision" in bad.output and "bf16" in bad.output
