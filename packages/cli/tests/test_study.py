"""Seeds as a grid axis, the report's mean / std over seeds, the study's statistics and claims, and a tiny
``advssm study paper-findings`` end to end (it resumes without training anything)."""
import json
import math

import pytest
from advssm.cli import study
from advssm.cli.experiment import seeds
from advssm.cli.experiment.spec import load_toml, resolve_experiment

# -- the seed axis --------------------------------------------------------------------------------------------------

def test_seed_axis_names_cells_and_sets_train_seed(tmp_path):
    spec = resolve_experiment({"grid": {"layer": ["s4d"], "method": ["standard", "pgd-at"], "seed": [0, 2]}})
    cells = spec.cells()
    assert [c.name for c in cells] == ["s4d-standard-seed0", "s4d-standard-seed2", "s4d-pgd-at-seed0",
                                       "s4d-pgd-at-seed2"]
    assert [c.train.seed for c in cells] == [0, 2, 0, 2]
    path = tmp_path / "grid.toml"
    path.write_text(spec.to_toml())
    assert "seed = [" in path.read_text()
    assert resolve_experiment(load_toml(path)) == spec  # round trip through the TOML


def test_seed_axis_refuses_repeats_and_a_seed_also_set_in_train():
    with pytest.raises(Exception, match="lists a value twice"):
        resolve_experiment({"grid": {"seed": [1, 1]}})
    with pytest.raises(Exception, match="would be ignored"):
        resolve_experiment({"grid": {"seed": [0, 1]}, "train": {"seed": 3}})


def test_seed_group_parses_cell_names():
    assert seeds.seed_group("s4d-pgd-at-seed1") == ("s4d-pgd-at", 1)
    assert seeds.seed_group("seed3") == ("cell", 3)
    assert seeds.seed_group("runA/s6-standard-relu-seed12") == ("runA/s6-standard-relu", 12)
    assert seeds.seed_group("s4d-pgd-at") == ("s4d-pgd-at", None)
    assert not seeds.has_seeds(["standard", "pgd-at"])


def test_aggregate_mean_and_sample_std():
    values = {0: (0.50, 0.30), 1: (0.60, 0.20), 2: (0.70, 0.40)}
    rows = [(f"s4-pgd-at-seed{s}", {"best": {"clean_acc": c, "pgd_acc": p, "aa_acc": None},
                                    "last": {"clean_acc": c - 0.1, "pgd_acc": p - 0.05, "aa_acc": None},
                                    "diff": {"clean_acc": 0.1, "pgd_acc": 0.05, "aa_acc": None}})
            for s, (c, p) in values.items()]
    rows.append(("s4-standard-seed0", {"best": {"clean_acc": 0.9}, "unfinished": "cut"}))
    groups = dict(seeds.aggregate(rows))
    best = groups["s4-pgd-at"]["best"]
    assert best["clean_acc"]["mean"] == pytest.approx(0.6)
    assert best["clean_acc"]["std"] == pytest.approx(0.1)  # ddof 1: sqrt((0.01 + 0 + 0.01) / 2)
    assert best["pgd_acc"]["std"] == pytest.approx(0.1) and best["pgd_acc"]["n"] == 3
    assert best["aa_acc"] == {"mean": None, "std": None, "n": 0}
    assert groups["s4-standard"]["unfinished"] == [0] and groups["s4-standard"]["best"]["clean_acc"]["n"] == 0
    table = seeds.group_table(list(groups.items()))
    assert "| s4-pgd-at | 3 | 60.00 ± 10.00 | 30.00 ± 10.00 | - |" in table
    assert "s4-standard (1 unfinished left out) | 0" in table


def test_mean_metrics_averages_each_epoch_over_seeds():
    metrics = {"a-seed0": [{"epoch": 1, "pgd_acc": 0.2}, {"epoch": 2, "pgd_acc": 0.4}],
               "a-seed1": [{"epoch": 1, "pgd_acc": 0.4}]}
    assert seeds.mean_metrics(metrics) == {"a": [{"epoch": 1.0, "pgd_acc": pytest.approx(0.3)}]}


# -- statistics ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[0.1, 0.2, 0.35], [-0.3, 0.01, 0.02, 0.5, -0.04], [1.0, 1.5]])
def test_t_interval_matches_scipy(values):
    from scipy import stats as sps

    iv = study.t_interval(values, 0.95)
    n = len(values)
    mean = sum(values) / n
    low, high = sps.t.interval(0.95, n - 1, loc=mean, scale=sps.sem(values))
    assert (iv.mean, iv.low, iv.high, iv.n) == (pytest.approx(mean), pytest.approx(low), pytest.approx(high), n)
    assert study.t_quantile(0.975, 2) == pytest.approx(4.302652729911275)


def test_interval_verdicts():
    assert study.t_interval([0.1, 0.12, 0.11]).verdict("greater") == "holds"
    assert study.t_interval([0.1, 0.12, 0.11]).verdict("less") == "does not hold"
    assert study.t_interval([-0.1, -0.12, -0.11]).verdict("less") == "holds"
    assert study.t_interval([-0.1, 0.3, 0.05]).verdict("greater") == "inconclusive"
    assert study.t_interval([0.5]).verdict("greater") == "inconclusive"  # one seed: no interval
    assert study.t_interval([]).verdict("greater") == "inconclusive"
    assert study.combine(["holds", "holds"]) == "holds"
    assert study.combine(["holds", "inconclusive"]) == "inconclusive"
    assert study.combine(["holds", "does not hold", "inconclusive"]) == "does not hold"
    assert study.combine([]) == "inconclusive"


# -- claims on fabricated results ---------------------------------------------------------------------------------

SEEDS = (0, 1, 2)
NOISE = (-0.01, 0.0, 0.01)  # per seed, added to every number: the paired differences stay exact


def fabricated(effect: float, noisy: bool = False) -> study.Table:
    """A results table where every claimed difference is ``effect`` (in accuracy; > 0 = the paper's direction),
    exact per seed, or with ``noisy`` differences of mean ``effect`` whose interval contains 0."""
    rows = []
    for seed, noise in zip(SEEDS, NOISE):
        spread = (-0.2, 0.05, 0.15)[seed] if noisy else 0.0  # mean 0: only the interval changes

        def add(layer, method, ads, best, diff, rate=None, seed=seed, noise=noise, spread=spread):
            shift = noise + spread
            rows.append({"dataset": "digits", "layer": layer, "method": method, "ads": ads, "seed": seed,
                         "cell": f"{layer}-{method}-{ads}-seed{seed}", "complete": True,
                         "best": {k: v + shift for k, v in best.items()},
                         "last": {k: v - diff for k, v in best.items()},
                         "diff": {k: diff + (shift if method == "pgd-at" else 0.0) for k in best},
                         "mix_change_rate": rate})
        for layer, gain, rate in (("s4", 0.1, 0.1), ("dss", 0.1, 0.1), ("s6", 0.1 + effect, 0.1 + effect)):
            add(layer, "standard", "none", {"clean_acc": 0.9, "pgd_acc": 0.1, "aa_acc": 0.05}, 0.0)
            add(layer, "pgd-at", "none", {"clean_acc": 0.8, "pgd_acc": 0.1 + gain,
                                          "aa_acc": 0.05 + gain}, 0.02,
                rate=(rate + (spread if layer == "s6" else 0.0)) if noisy else rate)
        add("mega", "standard", "none", {"clean_acc": 0.9, "pgd_acc": 0.1, "aa_acc": 0.05}, 0.0)
        add("mega", "pgd-at", "none", {"clean_acc": 0.8, "pgd_acc": 0.1 + 0.3, "aa_acc": 0.3}, 0.02 + effect)
        for layer in ("s4", "dss"):
            base = next(r for r in rows if r["layer"] == layer and r["method"] == "pgd-at" and r["seed"] == seed)
            add(layer, "pgd-at", "relu", {k: v - noise - spread + effect for k, v in base["best"].items()},
                0.02 - effect)
    return study.Table(rows)


@pytest.mark.parametrize("effect,expected", [(0.05, "holds"), (-0.05, "does not hold")])
def test_every_claim_follows_the_sign_of_a_clear_effect(effect, expected):
    results = {r["key"]: r for r in study.evaluate_claims(fabricated(effect))}
    assert set(results) == {c.key for c in study.CLAIMS}
    for key, result in results.items():
        assert result["checks"], key
        wrong = [c for c in result["checks"] if c["verdict"] != expected]
        if key == "at-gain" and expected == "does not hold":
            # AT still raises PGD / AA over ST for each layer by more than the negative effect; only the
            # S6-vs-LTI gain comparisons reverse
            assert all(c["verdict"] == "holds" for c in wrong) and all("vs ST" in c["label"] for c in wrong)
            assert all(c["verdict"] == expected for c in result["checks"] if "AT gain" in c["label"])
        else:
            assert not wrong, (key, wrong)
        assert result["verdict"] == expected, key


def test_noisy_differences_are_inconclusive_with_the_numbers_stated():
    table = fabricated(0.02, noisy=True)
    results = {r["key"]: r for r in study.evaluate_claims(table)}
    check = next(c for c in results["propagation"]["checks"] if c["label"].endswith("s6 vs s4"))
    assert check["verdict"] == "inconclusive" and check["n"] == 3
    assert check["low"] < 0 < check["high"] and check["difference"] == pytest.approx(0.02)
    assert results["propagation"]["verdict"] == "inconclusive"
    gain = next(c for c in results["at-gain"]["checks"] if c["label"] == "s4: Best PGD, PGD-AT vs ST")
    assert gain["lhs"] - gain["rhs"] == pytest.approx(gain["difference"])  # stated in points
    assert gain["difference"] == pytest.approx(100 * 0.1)


def test_a_claim_without_its_cells_is_inconclusive_and_says_so():
    table = study.Table([r for r in fabricated(0.05).rows if r["layer"] != "mega"])
    result = next(r for r in study.evaluate_claims(table) if r["key"] == "mega-overfitting")
    assert result["checks"] == [] and result["verdict"] == "inconclusive"
    one_seed = study.Table([r for r in fabricated(0.05).rows if r["seed"] == 0])
    check = study.evaluate_claims(one_seed)[0]["checks"][0]
    assert check["verdict"] == "inconclusive" and "a t-interval needs 2" in check["reason"]


def test_plan_resolves_every_scale():
    tiny = study.plan(study.SCALES["tiny"])
    assert [p.name for p in tiny] == ["digits-main", "digits-ads"]
    assert [c.name for c in tiny[1].spec.cells()] == ["s4-pgd-at-relu-seed0", "s4-pgd-at-relu-seed1"]
    small = study.plan(study.SCALES["small"], seeds=3)
    assert len(small[0].spec.cells()) == 5 * 2 * 3 and len(small[1].spec.cells()) == 2 * 3
    assert small[0].spec.eval.aa_version == "custom"  # the reduced AutoAttack, as the report says
    paper = study.plan(study.SCALES["paper"], ["cifar10"], overrides={"data.data_dir": "/data"})
    cell = paper[0].spec.cells()[0]
    assert paper[0].spec.preset == "paper-cifar10" and cell.data.data_dir == "/data" and cell.data.dataset == "cifar10"
    with pytest.raises(Exception, match="no preset"):
        study.plan(study.SCALES["paper"], ["digits"])


# -- end to end ------------------------------------------------------------------------------------------------------

def test_study_paper_findings_tiny_writes_findings_and_resumes(tmp_path, helpers):
    invoke = helpers.invoke
    out = tmp_path / "study"
    first = invoke("study", "paper-findings", "--scale", "tiny", "--out", out, "--no-progress")
    assert first.exit_code == 0, first.output
    findings = json.loads((out / "findings.json").read_text())
    assert [c["key"] for c in findings["claims"]] == [c.key for c in study.CLAIMS]
    assert all(c["verdict"] in study.VERDICTS for c in findings["claims"])
    assert len(findings["table"]) == 10 and all(row["complete"] for row in findings["table"])
    analysed = [row for row in findings["table"] if row["mix_change_rate"] is not None]
    assert sorted(row["cell"] for row in analysed) == [f"digits-main/{layer}-pgd-at-seed{s}"
                                                      for layer in ("s4", "s6") for s in (0, 1)]
    assert all(math.isfinite(row["mix_change_rate"]) for row in analysed)
    md = (out / "findings.md").read_text()
    assert "paired t-interval over seeds at 95 %" in md and "| s4-pgd-at | 2 |" in md
    report = (out / "digits-main" / "report.md").read_text()
    assert "Mean ± sample standard deviation over each group's seeds" in report and "| s6-standard | 2 |" in report
    page = (out / "digits-main" / "report.html").read_text()
    assert "Mean ± std over seeds" in page and "<td>s4-pgd-at</td><td class=num>2</td>" in page

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    stamps.update({p: p.stat().st_mtime_ns for p in (out / "analysis").rglob("*.json")})
    again = invoke("study", "paper-findings", "--scale", "tiny", "--out", out, "--no-progress")
    assert again.exit_code == 0, again.output
    assert "training" not in again.output and again.output.count("finished, skipped") == 10
    assert "analysing" not in again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or analysed again
    assert json.loads((out / "findings.json").read_text())["claims"] == findings["claims"]

    other = invoke("study", "paper-findings", "--scale", "tiny", "--seeds", "3", "--out", out, "--no-progress")
    assert other.exit_code != 0 and "holds a different study" in other.output

    per_seed = invoke("report", out / "digits-main", "--per-seed", "--json")
    assert per_seed.exit_code == 0, per_seed.output
    groups = json.loads(per_seed.output)["groups"]
    assert groups["s4-pgd-at"]["seeds"] == [0, 1]
    assert "## Per seed" in (out / "digits-main" / "report.md").read_text()


def test_study_dry_run_resolves_the_paper_scale(tmp_path, helpers):
    invoke = helpers.invoke
    result = invoke("study", "paper-findings", "--scale", "paper", "--data-dir", tmp_path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cells"] == 3 * (5 * 2 + 2) * 3
    assert data["parts"]["mnist-main"]["preset"] == "paper-mnist"
    assert data["parts"]["tinyimagenet-ads"]["grid"] == {"layer": ["s4", "dss"], "method": ["pgd-at"],
                                                        "ads": ["relu"], "seed": [0, 1, 2]}
    assert not (tmp_path / "runs").exists()
