"""The training loop: robustness gain of PGD-AT, exact resume, non-finite losses, files and callbacks."""
import json
import os
import subprocess
import sys

import pytest
import torch
from advssm.adv_train.config import TrainConfig
from advssm.adv_train.trainer import (
    NonFiniteLossError,
    ResumeWarning,
    Trainer,
    eval_seed,
    remove_stale_temps,
    robust_overfitting_summary,
)
from torch import nn
from torch.utils.data import TensorDataset

TIMES = ("train_time", "epoch_time")


def shortcut_task(n=480, d=16, seed=0):
    """Label in feature 0 with margin 0.25 (robust at eps 0.1); features 1.. carry it with margin 0.03 only.

    A standard model leans on the many weak features, which a 0.1 perturbation flips together; an
    adversarially trained one must use feature 0.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    sign = (2 * y - 1).float()[:, None]
    x = torch.cat([0.5 + 0.25 * sign + 0.1 * torch.randn(n, 1, generator=g),
                   0.5 + 0.03 * sign + 0.01 * torch.randn(n, d - 1, generator=g)], dim=1).clamp(0, 1)
    cut = n * 3 // 4
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class MLP(nn.Module):
    def __init__(self, d=16, hidden=16, dropout=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.first_layer = nn.Linear(d, hidden)
        self.rest = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.rest(self.first_layer(x))


def config(**kw):
    base = dict(epochs=3, batch_size=64, lr=1e-2, eps=0.1, alpha=0.03, attack_steps=5, eval_pgd_steps=5, aa_every=0)
    return TrainConfig(**{**base, **kw})


class Quiet:
    pass


def strip(history):
    return [{k: v for k, v in m.items() if k not in TIMES} for m in history]


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(16, 2)


def test_pgd_at_raises_pgd_accuracy_over_standard():
    # a linear model keeps the comparison convex and stable; both reach > 0.9 clean accuracy
    train, test = shortcut_task(n=320)
    results = {m: Trainer(linear_model(), train, test, config(method=m, epochs=4, lr=5e-2, batch_size=32),
                          callbacks=[Quiet()]).fit() for m in ("standard", "pgd-at")}
    std, adv = results["standard"]["last"], results["pgd-at"]["last"]
    assert std["clean_acc"] > 0.9 and adv["clean_acc"] > 0.9, results
    assert adv["pgd_acc"] > 0.8 and adv["pgd_acc"] > std["pgd_acc"] + 0.1, results


class Interrupt(Exception):
    pass


class StopAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.epoch:
            raise Interrupt


def noisy_augment(x, generator):
    return (x + 0.01 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


@pytest.mark.parametrize("method,stop", [("free-at", 1), ("pgd-at", 2), ("yopo", 2), ("trades", 1)])
def test_resume_gives_exactly_the_uninterrupted_run(tmp_path, method, stop):
    train, test = shortcut_task(n=200)
    cfg = config(method=method, free_replays=2, eval_n=30)
    kw = dict(augment=noisy_augment)  # dropout, augmentation, persistent noise and attacks all use RNG
    straight = Trainer(MLP(dropout=0.2), train, test, cfg, out_dir=tmp_path / "a", callbacks=[Quiet()], **kw)
    summary_a = straight.fit()
    with pytest.raises(Interrupt):
        Trainer(MLP(dropout=0.2), train, test, cfg, out_dir=tmp_path / "b", callbacks=[StopAfter(stop)], **kw).fit()
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == stop
    resumed = Trainer(MLP(dropout=0.2, seed=99), train, test, cfg, out_dir=tmp_path / "b", callbacks=[Quiet()], **kw)
    summary_b = resumed.fit(resume=True)
    assert summary_a == summary_b
    assert strip(straight.history) == strip(resumed.history)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    lines = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert strip(lines) == strip(straight.history)


def test_resume_checks_its_inputs(tmp_path):
    train, test = shortcut_task(n=100)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(MLP(), train, test, config(), out_dir=tmp_path, callbacks=[Quiet()]).fit(resume=True)
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    with pytest.raises(ValueError, match="differs from the saved run in lr"):
        Trainer(MLP(), train, test, config(epochs=1, lr=0.5), out_dir=tmp_path, callbacks=[Quiet()]).fit(resume=True)


class NaNAt(MLP):
    """Emits NaN logits on the given (1-based) epoch and 0-based batch of training."""

    def __init__(self, epoch, batch, batches_per_epoch):
        super().__init__()
        self.at, self.calls = (epoch - 1) * batches_per_epoch + batch, -1

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train, test = shortcut_task(n=160)  # 120 training examples: 2 batches of 64
    model = NaNAt(epoch=2, batch=1, batches_per_epoch=2)
    snapshots = {}

    class Snapshot:
        def on_epoch_end(self, trainer, epoch, metrics):
            snapshots[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 1"):
        Trainer(model, train, test, config(), out_dir=tmp_path, callbacks=[Snapshot()]).fit()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(snapshots) == {1} and all(torch.equal(last[k], v) for k, v in snapshots[1].items())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["epoch"] == 1


def test_huge_learning_rate_is_reported(tmp_path):
    train, test = shortcut_task(n=160)
    with pytest.raises(NonFiniteLossError, match=r"at epoch \d+, batch \d+; lower TrainConfig.lr"):
        Trainer(MLP(), train, test, config(lr=1e30, epochs=5, scheduler="none"), callbacks=[Quiet()]).fit()


def test_files_summary_and_callbacks(tmp_path, capsys):
    train, test = shortcut_task(n=160)
    events = []

    class Record:
        def on_epoch_start(self, trainer, epoch):
            events.append(("start", epoch))

        def on_batch_end(self, trainer, epoch, batch_idx, n_batches, stats):
            events.append(("batch", epoch, batch_idx, n_batches))

        def on_eval(self, trainer, epoch, stage, done, total):
            events.append(("eval", epoch, stage, done, total))

        def on_epoch_end(self, trainer, epoch, metrics):
            events.append(("end", epoch))

    def saver(path, model, metadata):
        torch.save({"w": model.state_dict(), "epoch": metadata["epoch"]}, path)

    saver.suffix = ".ckpt"
    trainer = Trainer(MLP(), train, test, config(method="trades", eval_n=25), out_dir=tmp_path, save_model=saver,
                      callbacks=[Record()])
    summary = trainer.fit()
    assert capsys.readouterr().err == ""  # a callback replaces the default progress line
    assert ("batch", 1, 1, 2) in events and ("eval", 3, "pgd", 25, 25) in events and events[-1] == ("end", 3)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert {"train_loss", "train_clean_acc", "train_adv_acc", "clean_acc", "pgd_acc", "aa_acc", "lr",
            "epoch_time"} <= set(lines[0])
    assert all(m["aa_acc"] is None for m in lines) and lines[0]["lr"] > lines[2]["lr"]  # cosine schedule
    # a two-class task: the summary flags a Best near chance (50 %)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary == robust_overfitting_summary(lines, chance=0.5)
    best = max(lines, key=lambda m: m["pgd_acc"])
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == best["epoch"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 3
    assert {"train_state.pt", "metrics.jsonl", "summary.json", "best.ckpt", "last.ckpt"} <= {
        p.name for p in tmp_path.iterdir()}


def test_autoattack_every_k_epochs_and_at_the_last(tmp_path):
    train, test = shortcut_task(n=160)
    cfg = config(method="fast-at", aa_every=2, aa_n=20, aa_version="custom", aa_attacks=["apgd-ce"])
    trainer = Trainer(linear_model(), train, test, cfg, callbacks=[Quiet()])
    summary = trainer.fit()
    aa = [m["aa_acc"] for m in trainer.history]
    assert aa[0] is None and all(a is not None and 0 <= a <= 1 for a in aa[1:])
    assert summary["last"]["aa_acc"] == aa[2]
    # AutoAttack is at least as strong as no attack on the same first 20 examples
    clean20 = Trainer(trainer.model, train, test, config(eval_n=20), callbacks=[Quiet()])._evaluate(9, False)
    assert aa[2] <= clean20["clean_acc"]


def test_autoattack_rand_runs_in_the_trainer(monkeypatch):
    """aa_version="rand" reaches the trainer's AutoAttack: APGD-CE and APGD-DLR, each step 20 EOT samples."""
    from advssm.adv_train.attacks import AutoAttack

    seen, perturb = [], AutoAttack.perturb

    def spy(self, x, y, generator):
        out = perturb(self, x, y, generator)
        seen.append((self.version, {name: (a.steps, a.eot_iter) for name, a in self.attacks.items()},
                     self.sub_attacks()[0].passes()[1], len(x), self.last_n_correct))
        return out

    monkeypatch.setattr(AutoAttack, "perturb", spy)
    train, test = shortcut_task(n=160)
    torch.manual_seed(0)
    model = nn.Linear(16, 3)  # three logits for APGD-DLR (labels 0 and 1 only)
    trainer = Trainer(model, train, test, config(epochs=1, aa_every=1, aa_n=4, aa_version="rand"), callbacks=[Quiet()])
    summary = trainer.fit()
    assert len(seen) == 1
    version, attacks, apgd_ce_backward, batch, correct = seen[0]
    assert version == "rand" and attacks == {"apgd-ce": (100, 20), "apgd-dlr": (100, 20)} and batch == 4
    # the random start and each of the 100 steps averaged 20 forward-backward samples per clean-correct example
    assert correct > 0 and apgd_ce_backward == (1 + 100) * 20 * correct
    assert summary["last"]["aa_acc"] is not None and 0 <= summary["last"]["aa_acc"] <= 1


def test_default_saver_and_progress_line(tmp_path, capsys):
    train, test = shortcut_task(n=160)
    trainer = Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path)
    trainer.fit()
    assert capsys.readouterr().err.startswith("epoch 1/1 ")
    model = MLP(seed=5)
    model.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values()))
    assert json.loads((tmp_path / "last.pt.json").read_text())["epoch"] == 1


def test_summary_diff_and_missing_autoattack():
    hist = [{"epoch": 1, "clean_acc": 0.8, "pgd_acc": 0.5, "aa_acc": None},
            {"epoch": 2, "clean_acc": 0.9, "pgd_acc": 0.6, "aa_acc": 0.55},
            {"epoch": 3, "clean_acc": 0.95, "pgd_acc": 0.4, "aa_acc": 0.35}]
    s = robust_overfitting_summary(hist)
    assert s["best"] == hist[1] and s["last"] == hist[2]
    assert s["diff"]["pgd_acc"] == pytest.approx(0.2) and s["diff"]["aa_acc"] == pytest.approx(0.2)
    assert robust_overfitting_summary(hist[:1] + hist[2:])["diff"]["aa_acc"] is None
    with pytest.raises(ValueError, match="at least one epoch"):
        robust_overfitting_summary([])


def test_optimisers_follow_the_config():
    train, test = shortcut_task(n=100)
    trainer = Trainer(MLP(), train, test, config(method="yopo", lr=3e-3, weight_decay=1e-4, epochs=7))
    assert set(trainer.optimizers) == {"main", "layer_one"}
    for opt in trainer.optimizers.values():
        assert isinstance(opt, torch.optim.AdamW)
        assert opt.param_groups[0]["lr"] == 3e-3 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert {s.T_max for s in trainer.schedulers.values()} == {7}
    assert Trainer(MLP(), train, test, config(scheduler="none")).schedulers == {}


def test_bad_arguments():
    train, test = shortcut_task(n=100)
    with pytest.raises(TypeError, match="Trainer needs a TrainConfig"):
        Trainer(MLP(), train, test, {"epochs": 1})
    with pytest.raises(ValueError, match="test_set must be a non-empty"):
        Trainer(MLP(), train, TensorDataset(torch.zeros(0, 16), torch.zeros(0)), config())
    with pytest.raises(TypeError, match="first-layer protocol"):
        Trainer(nn.Linear(16, 2), train, test, config(method="yopo"))


def test_optim_tags_become_parameter_groups():
    """Per-parameter ``_optim`` settings (S4's SSM lr, Mamba's no-decay A and D) reach the optimiser and schedule."""
    train, test = shortcut_task(n=100)
    model = MLP()
    special = list(model.parameters())[:2]
    for p in special:
        p._optim = {"lr": 1e-4, "weight_decay": 0.0}
    trainer = Trainer(model, train, test, config(lr=3e-3, weight_decay=1e-2, epochs=4))
    (opt,) = trainer.optimizers.values()
    plain, tagged = opt.param_groups
    assert (plain["lr"], plain["weight_decay"]) == (3e-3, 1e-2)
    assert (tagged["lr"], tagged["weight_decay"]) == (1e-4, 0.0)
    assert [id(p) for p in tagged["params"]] == [id(p) for p in special]
    assert len(plain["params"]) + len(tagged["params"]) == len(list(model.parameters()))
    opt.step()  # no gradients yet: a no-op that keeps the scheduler's call order
    trainer.schedulers["main"].step()
    assert tagged["lr"] < 1e-4 and plain["lr"] < 3e-3  # each group follows the cosine schedule from its own lr


def test_run_files_get_ordinary_permissions(tmp_path):
    """metrics, state and summary are created like any new file (umask), not owner-only like mkstemp's."""
    train, test = shortcut_task(n=100)
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert not list(tmp_path.glob(".*.tmp"))


# -- issue 11 items 6-8: where and by what Best is chosen, resuming with a changed rate, the environment
# record, a corrupt training state, stale temporaries ------------------------------------------------------

HISTORY = [{"epoch": 1, "clean_acc": 0.11, "pgd_acc": 0.14, "aa_acc": None},  # untrained: at chance, PGD "best"
           {"epoch": 2, "clean_acc": 0.80, "pgd_acc": 0.02, "aa_acc": None},
           {"epoch": 3, "clean_acc": 0.805, "pgd_acc": 0.01, "aa_acc": None}]


def test_select_by_clean_or_pgd_and_the_near_chance_warning():
    by_pgd = robust_overfitting_summary(HISTORY, select_by="pgd", chance=0.1)
    assert by_pgd["best"]["epoch"] == 1 and "near chance" in by_pgd["warnings"][0]
    by_clean = robust_overfitting_summary(HISTORY, select_by="clean", chance=0.1)
    assert by_clean["best"]["epoch"] == 3 and "warnings" not in by_clean
    assert by_clean["selection"] == {"on": "test", "by": "clean", "metric": "clean_acc", "epoch": 3}
    with pytest.raises(ValueError, match="select_by"):
        robust_overfitting_summary(HISTORY, select_by="loss")


def test_auto_selects_clean_for_standard_and_pgd_for_adversarial_training():
    train, test = shortcut_task(n=100)
    assert Trainer(MLP(), train, test, config(method="standard")).select_by == "clean"
    assert Trainer(MLP(), train, test, config(method="trades")).select_by == "pgd"
    assert Trainer(MLP(), train, test, config(method="standard", select_by="pgd")).select_by == "pgd"


def test_select_on_val_holds_the_slice_out_of_training():
    train, test = shortcut_task(n=160)
    trainer = Trainer(MLP(), train, test, config(epochs=2, select_on="val", val_n=20), callbacks=[Quiet()])
    assert len(trainer.train_set) == len(train) - 20 and len(trainer.val_set) == 20
    summary = trainer.fit()
    assert summary["selection"]["on"] == "val" and {"val_clean_acc", "val_pgd_acc"} <= set(summary["best"])
    best = max(trainer.history, key=lambda m: (m["val_clean_acc"], -m["epoch"]))
    assert summary["best"]["epoch"] == best["epoch"]
    with pytest.raises(ValueError, match="val_n=120 holds out the whole training set"):
        Trainer(MLP(), train, test, config(select_on="val", val_n=120))


def test_resume_with_a_new_rate_scales_every_group_and_is_recorded(tmp_path):
    train, test = shortcut_task(n=160)
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    state["config"]["epochs"] = 3  # as if stopped after epoch 1 of 3
    torch.save(state, tmp_path / "train_state.pt")
    with pytest.raises(ValueError, match="differs from the saved run in lr"):
        Trainer(MLP(), train, test, config(lr=1e-3), out_dir=tmp_path, callbacks=[Quiet()]).fit(resume=True)
    trainer = Trainer(MLP(), train, test, config(lr=1e-3), out_dir=tmp_path, callbacks=[Quiet()])
    with pytest.warns(ResumeWarning, match="lr 0.01 -> 0.001 from epoch 2"):
        summary = trainer.fit(resume=True, allow_changes=["lr"])
    assert trainer.schedulers["main"].base_lrs == [pytest.approx(1e-3)]
    assert summary["changes"] == [{"from_epoch": 2, "lr": {"was": 0.01, "now": 0.001}}]
    assert json.loads((tmp_path / "environment.json").read_text())["changes"] == summary["changes"]
    with pytest.raises(ValueError, match="only lr, batch_size may change"):
        Trainer(MLP(), train, test, config(lr=1e-3, epochs=4), out_dir=tmp_path,
                callbacks=[Quiet()]).fit(resume=True, allow_changes=["lr", "epochs"])


def test_a_corrupt_training_state_names_the_file(tmp_path):
    train, test = shortcut_task(n=100)
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    state = tmp_path / "train_state.pt"
    state.write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match=f"the training state {state} is corrupt or truncated.*delete"):
        Trainer(MLP(), train, test, config(epochs=2), out_dir=tmp_path, callbacks=[Quiet()]).fit(resume=True)


def test_environment_is_recorded_and_a_different_resume_warns(tmp_path):
    train, test = shortcut_task(n=100)
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    record = json.loads((tmp_path / "environment.json").read_text())
    assert record["starts"][0] | {"time": None} == {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                                    "device": "cpu", "world_size": 1, "from_epoch": 0, "time": None}
    record["starts"][0]["threads"] += 3  # as if the first start had more threads
    (tmp_path / "environment.json").write_text(json.dumps(record))
    threads = torch.get_num_threads()
    with pytest.warns(ResumeWarning, match=f"threads {threads + 3} -> {threads}"):
        Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit(resume=True)


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale, live = tmp_path / f".metrics.jsonl.{dead}.ab12.tmp", tmp_path / f".metrics.jsonl.{os.getppid()}.ab12.tmp"
    stale.write_text("cut"), live.write_text("busy")
    remove_stale_temps(tmp_path / "metrics.jsonl")
    assert not stale.exists() and live.exists()
    train, test = shortcut_task(n=100)
    stale.write_text("cut")
    Trainer(MLP(), train, test, config(epochs=1), out_dir=tmp_path, callbacks=[Quiet()]).fit()
    assert not stale.exists()


def test_eval_seed_is_the_same_on_every_rank_and_differs_per_epoch():
    assert eval_seed(5, 1) != eval_seed(5, 2) != eval_seed(6, 2)
