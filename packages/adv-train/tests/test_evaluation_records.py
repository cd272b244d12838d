"""evaluate()'s contract beyond the accuracies: one robust rule, per-batch seeds, the per-example records
file and resuming from it, the model's own device, pass counts, attack descriptions, RobustBench records."""
import copy
import functools
import json

import pytest
import torch
from advssm.adv_train import APGD, FGSM, PGD, AutoAttack, build_attack, evaluate
from torch import nn

EPS = 0.1


def data(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 3, 3, generator=g)
    return x, (x.flatten(1)[:, :4].sum(1) > 2).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()


def fitted_model():
    return copy.deepcopy(_fitted_model())


@functools.cache
def _fitted_model():
    torch.manual_seed(0)
    x, y = data(300, seed=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def random_attacks(model):
    """Attacks whose result depends on their seed: PGD from a random start, FGSM (deterministic)."""
    return {"fgsm": FGSM(model, EPS), "pgd": PGD(model, EPS, alpha=EPS / 4, steps=3, random_start=True)}


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_agree_with_the_result_and_a_by_hand_check(tmp_path):
    model = fitted_model()
    x, y = data()
    out = tmp_path / "records.jsonl"
    result = evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=3, records=out)
    rows = read(out)
    assert [r["index"] for r in rows] == list(range(60)) and [r["label"] for r in rows] == y.tolist()
    assert [r["batch"] for r in rows] == [i // 16 for i in range(60)]
    assert ["batch_done" in r for r in rows] == [i in (15, 31, 47, 59) for i in range(60)]
    with torch.no_grad():
        clean_logits = model(x)
    assert [r["clean_correct"] for r in rows] == (clean_logits.argmax(1) == y).tolist()
    assert result.clean_acc == sum(r["clean_correct"] for r in rows) / 60
    for name in ("fgsm", "pgd"):
        assert result.robust_acc[name] == sum(r["robust"][name] for r in rows) / 60
    # one rule: robust under A iff clean-correct and A(x) correct; worst = robust under all
    assert all(r["clean_correct"] or not any(r["robust"].values()) for r in rows)
    assert result.worst_acc == sum(all(r["robust"].values()) for r in rows) / 60
    assert 0 < result.worst_acc < result.clean_acc
    for r in rows:
        if not r["clean_correct"]:
            assert r["broken_by"] is None and r["perturbation_norm"] is None and r["margin"] < 0
        elif all(r["robust"].values()):
            assert r["broken_by"] is None and r["perturbation_norm"] is None and r["margin"] > 0
            assert r["pred"] == r["label"]
        else:
            first = next(name for name in ("fgsm", "pgd") if not r["robust"][name])
            assert r["broken_by"] == first
            assert 0 < r["perturbation_norm"] <= EPS + 1e-6
            assert r["margin"] < 0 and r["pred"] != r["label"]
    # the margin is the clean one where no attack ran; at most the clean one elsewhere
    clean_margin = [float(z[t] - torch.cat([z[:t], z[t + 1:]]).max()) for z, t in zip(clean_logits, y.tolist())]
    for r, m in zip(rows, clean_margin):
        assert r["margin"] == pytest.approx(m, abs=1e-5) if not r["clean_correct"] else r["margin"] <= m + 1e-5


def test_autoattack_records_name_the_component(tmp_path):
    model = fitted_model()
    auto = AutoAttack(model, eps=0.15, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
    for attack in auto.attacks.values():
        attack.steps = 10
    out = tmp_path / "aa.jsonl"
    result = evaluate(model, data(), {"aa": auto}, seed=0, records=out)
    rows = read(out)
    assert {r["broken_by"] for r in rows} <= {None, "apgd-ce", "apgd-t"}
    assert any(r["broken_by"] == "apgd-ce" for r in rows)
    assert all(r["perturbation_norm"] <= 0.15 + 1e-6 for r in rows if r["broken_by"])
    assert result.robust_acc["aa"] == sum(r["robust"]["aa"] for r in rows) / 60


def test_seed_makes_each_batch_independent_of_what_ran_before():
    model = fitted_model()
    x, y = data()
    first = evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=7)
    torch.rand(1000)  # global RNG state moved on
    again = evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=7)
    assert first.robust_acc == again.robust_acc
    # nor on the attacks' own seeds
    attacks = random_attacks(model)
    attacks["pgd"].seed = 12345
    assert evaluate(model, (x, y), attacks, batch_size=16, seed=7).robust_acc == first.robust_acc
    # while another seed draws other random starts
    others = {evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=s).robust_acc["pgd"]
              for s in range(8)}
    assert len(others) > 1


def test_seed_is_restored_and_reproducible():
    model = fitted_model()
    attacks = random_attacks(model)
    attacks["apgd"] = APGD(model, eps=EPS, steps=5, seed=11)
    evaluate(model, data(), attacks, seed=1)
    assert attacks["pgd"].seed is None and attacks["apgd"].seed == 11, "evaluate restores the attacks' own seeds"
    auto = AutoAttack(model, eps=EPS, version="custom", seed=4,
                      attacks=[build_attack(name, model, "Linf", EPS, seed=4, steps=2)
                               for name in ("apgd-ce", "square")])
    evaluate(model, data(20), [auto], seed=1)
    assert [a.seed for a in auto.attacks.values()] == [4, 4]


class Interrupt(Exception):
    pass


class InterruptingPGD(PGD):
    """PGD that raises once it has been called ``after`` times (an evaluation killed mid-way)."""

    def __init__(self, *args, after, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.after = 0, after

    def perturb(self, x, y, generator):
        self.calls += 1
        if self.calls > self.after:
            raise Interrupt
        return super().perturb(x, y, generator)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    model = fitted_model()
    x, y = data()
    whole = tmp_path / "whole.jsonl"
    reference = evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=5, records=whole)

    cut = tmp_path / "cut.jsonl"
    attacks = random_attacks(model)
    attacks["pgd"] = InterruptingPGD(model, EPS, alpha=EPS / 4, steps=3, random_start=True, after=2)
    with pytest.raises(Interrupt):
        evaluate(model, (x, y), attacks, batch_size=16, seed=5, records=cut)
    assert [r["batch"] for r in read(cut)] == [0] * 16 + [1] * 16
    with open(cut, "a") as f:  # a third batch cut off inside a write
        f.write(json.dumps(read(whole)[32])[:40])

    seen = []
    resumed = evaluate(model, (x, y), random_attacks(model), batch_size=16, seed=5, records=cut, resume=True,
                       progress=seen.append)
    assert {s["done"] for s in seen} == {48, 60}, "finished batches are read back, not recomputed"
    assert cut.read_text() == whole.read_text()
    for field in ("n", "clean_acc", "robust_acc", "worst_acc", "warnings", "forward_passes", "backward_passes",
                  "attacks"):
        assert getattr(resumed, field) == getattr(reference, field), field
    # resuming a finished file recomputes nothing
    done = evaluate(model, (x, y), {"fgsm": FGSM(model, EPS), "pgd": InterruptingPGD(model, EPS, alpha=0.025,
                    steps=3, after=0)}, batch_size=16, seed=5, records=cut, resume=True)
    assert done.robust_acc == reference.robust_acc


def test_records_file_is_not_overwritten_or_mixed_up(tmp_path):
    model = fitted_model()
    out = tmp_path / "r.jsonl"
    evaluate(model, data(), random_attacks(model), seed=0, records=out)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        evaluate(model, data(), random_attacks(model), seed=0, records=out)
    with pytest.raises(ValueError, match="resume with the same attacks"):
        evaluate(model, data(), {"fgsm": FGSM(model, EPS)}, seed=0, records=out, resume=True)
    with pytest.raises(ValueError, match="does not match the data"):
        evaluate(model, data(seed=9), random_attacks(model), seed=0, records=out, resume=True)
    with pytest.raises(ValueError, match="needs the records file"):
        evaluate(model, data(), random_attacks(model), resume=True)
    (tmp_path / "other.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a records file"):
        evaluate(model, data(), random_attacks(model), records=tmp_path / "other.jsonl", resume=True)
    fresh = tmp_path / "new" / "r.jsonl"
    evaluate(model, data(), random_attacks(model), records=fresh, resume=True)  # nothing to resume: starts
    assert len(read(fresh)) == 60


def test_runs_on_the_model_device_and_refuses_another():
    model = fitted_model()
    with pytest.raises(ValueError, match="the model is on cpu"):
        evaluate(model, data(), [FGSM(model, EPS)], device="meta")
    assert evaluate(model, data(), [FGSM(model, EPS)], device="cpu").n == 60


def test_pass_counts():
    model = fitted_model()
    x, y = data()
    steps = 4
    result = evaluate(model, (x, y), {"fgsm": FGSM(model, EPS), "pgd": PGD(model, EPS, alpha=0.02, steps=steps)},
                      batch_size=25, check_masking=False)
    with torch.no_grad():
        n_correct = int((model(x).argmax(1) == y).sum())
    assert result.forward_passes["fgsm"] == result.backward_passes["fgsm"] == n_correct
    assert result.forward_passes["pgd"] == result.backward_passes["pgd"] == steps * n_correct
    # evaluate's own passes: the clean pass on every example and one check per attack on the attacked ones
    assert result.forward_passes["total"] == (1 + steps) * n_correct + 60 + 2 * n_correct
    assert result.backward_passes["total"] == (1 + steps) * n_correct


def test_descriptions_and_robustbench_record():
    model = fitted_model()
    auto = AutoAttack(model, eps=EPS, version="custom", seed=0,
                      attacks=[build_attack(name, model, "Linf", EPS, seed=0, steps=3)
                               for name in ("apgd-ce", "square")])
    result = evaluate(model, data(), {"aa": auto}, seed=0)
    described = result.attacks["aa"]
    assert described["attack"] == "AutoAttack" and described["version"] == "custom"
    assert described["norm"] == "Linf" and described["eps"] == EPS
    assert [c["name"] for c in described["components"]] == ["apgd", "square"]
    assert described["components"][0]["steps"] == 3 and described["components"][1]["queries"] == 150
    record = result.to_robustbench(architecture="S4D", dataset="mnist")
    assert record["architecture"] == "S4D" and record["dataset"] == "mnist"
    assert record["clean_acc"] == f"{100 * result.clean_acc:.2f}"
    assert record["autoattack_acc"] == f"{100 * result.robust_acc['aa']:.2f}"
    assert (record["eps"], record["threat_model"], record["n_examples"]) == (EPS, "Linf", 60)
    assert record["number_forward_passes"] == 1 and record["autoattack_version"] == "custom"
    assert record["attack_forward_passes"] == result.forward_passes["total"] / 60 > 1
    json.dumps(record)
    mixed = evaluate(model, data(), {"a": FGSM(model, EPS), "b": FGSM(model, 0.2)})
    with pytest.raises(ValueError, match="one threat model and one eps"):
        mixed.to_robustbench()


def test_total_is_a_reserved_name():
    model = fitted_model()
    with pytest.raises(ValueError, match="'total' names the summed pass counts"):
        evaluate(model, data(), {"total": FGSM(model, EPS)})
