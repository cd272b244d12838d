"""advssm run under a real torchrun: 2 gloo ranks on the CPU, one run folder, the metrics of 1 process.

Tolerances: each rank averages the gradient of its half of every global batch and the halves are combined
weighted by size, which is the 1-process gradient up to float32 summation order (~1e-7 relative); two
epochs of AdamW keep the training loss within 1e-5 relative. Accuracies are counts over the same examples
(per batch seeds for the attacks), so they may differ only where a logit margin is within float noise: at
most one example of the 32 test examples (the per-epoch numbers) or of the 8 of the final AutoAttack.
"""
import json
import os
import socket
import subprocess
import sys

TINY = ["--train-size", "64", "--test-size", "32", "--epochs", "2", "--d-model", "8", "--d-state", "4",
        "--n-layers", "1", "--no-progress", "--set", "train.batch_size=32", "--set", "train.attack_steps=2",
        "--set", "train.eval_pgd_steps=2", "--set", "eval.aa_n=8", "--set", "eval.aa_steps=2",
        "--method", "standard"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def advssm(args, *, ranks=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [] if ranks is None else ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                                         "--master-addr", "127.0.0.1", "--master-port", free_port()]
    done = subprocess.run([sys.executable, *launcher, "-m", "advssm.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def rows(cell_dir):
    return [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_under_torchrun_writes_one_folder_with_the_metrics_of_one_process(tmp_path):
    advssm(["run", *TINY, "--runs-root", tmp_path / "one"])
    two = advssm(["run", *TINY, "--runs-root", tmp_path / "two", "--json"], ranks=2)
    (one_dir,), (two_dir,) = list((tmp_path / "one").iterdir()), list((tmp_path / "two").iterdir())
    assert json.loads(two.stdout)["run_dir"] == str(two_dir)  # rank 0 alone printed, its own folder
    assert sorted(p.name for p in two_dir.rglob("*")) == sorted(p.name for p in one_dir.rglob("*"))
    m1, m2 = rows(one_dir / "standard"), rows(two_dir / "standard")
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * abs(a["train_loss"])
        for key in ("clean_acc", "pgd_acc"):
            assert abs(a[key] - b[key]) <= 1 / 32 + 1e-9, (key, a[key], b[key])
    s1 = json.loads((one_dir / "standard" / "final_eval.json").read_text())["stages"]
    s2 = json.loads((two_dir / "standard" / "final_eval.json").read_text())["stages"]
    for stage in ("best", "last"):
        for key in ("clean_acc", "pgd_acc", "aa_acc"):
            assert abs(s1[stage][key] - s2[stage][key]) <= 1 / 8 + 1e-9, (stage, key)
