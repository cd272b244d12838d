"""evaluate() under torchrun: 2 gloo ranks on the CPU return, on every rank, exactly the result and the records
file of a 1-process run, also when the 2-rank run resumes a cut-short evaluation; a records file that may not
be overwritten is refused on every rank (none is left waiting for rank 0).

Exact equality is expected, not closeness: every batch is evaluated whole by one rank, and with ``seed`` each
batch's attacks are seeded from the global batch index, so no rank's arithmetic or randomness differs from the
1-process run's. 7 batches over 2 ranks also exercises an uneven last round.
"""
import json
import os
import socket
import subprocess
import sys

SCRIPT = '''
import json
import os
import sys
import torch
from torch import nn
from advssm.adv_train import PGD, AutoAttack, build_attack, evaluate
from advssm.adv_train.distributed import init_from_env, shutdown

out, mode = sys.argv[1], sys.argv[2]
info = init_from_env(use_cuda=False)
torch.manual_seed(0)
x = torch.rand(50, 6)
y = (x[:, 0] + x[:, 1] > 1).long() + 2 * (x[:, 2] > 0.5).long()
model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
opt = torch.optim.Adam(model.parameters(), 1e-2)
for _ in range(100):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
model.eval()
auto = AutoAttack(model, eps=0.1, version="custom", seed=0,
                  attacks=[build_attack(n, model, "Linf", 0.1, seed=0, steps=3) for n in ("apgd-ce", "square")])
attacks = {"pgd": PGD(model, 0.1, alpha=0.03, steps=3, random_start=True), "aa": auto}
if mode == "refuse":  # the records file exists and resume is off: every rank raises, none waits for rank 0
    try:
        evaluate(model, (x, y), attacks, batch_size=8, seed=3, records=os.path.join(out, "records.jsonl"))
    except FileExistsError as error:
        open(os.path.join(out, f"refused_{info.rank}"), "w").write(str(error))
    shutdown()
    os._exit(0)
result = evaluate(model, (x, y), attacks, n_examples=24 if mode == "part" else None, batch_size=8, seed=3,
                  records=os.path.join(out, "records.jsonl"), resume=mode == "resume")
fields = result.to_dict()
del fields["seconds"]
with open(os.path.join(out, f"result_{mode}_{info.rank}_of_{info.world_size}.json"), "w") as f:
    json.dump(fields, f)
shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # past gloo's teardown race in torch 2.13 (see test_distributed.py)
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def two_ranks(script, out, mode):
    run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(script), str(out), mode])


def test_two_gloo_ranks_return_the_one_process_result(tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(SCRIPT)
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    for folder in (one, two, resumed):
        folder.mkdir()
    run([str(script), str(one), "whole"])
    two_ranks(script, two, "whole")
    two_ranks(script, resumed, "part")
    assert len((resumed / "records.jsonl").read_text().splitlines()) == 24
    two_ranks(script, resumed, "resume")

    reference = json.loads((one / "result_whole_0_of_1.json").read_text())
    assert reference["n"] == 50 and 0 < reference["worst_acc"] < reference["clean_acc"]
    assert reference["forward_passes"]["total"] > 0
    for path in [two / "result_whole_0_of_2.json", two / "result_whole_1_of_2.json",
                 resumed / "result_resume_0_of_2.json", resumed / "result_resume_1_of_2.json"]:
        assert json.loads(path.read_text()) == reference, path.name
    records = (one / "records.jsonl").read_text()
    assert (two / "records.jsonl").read_text() == records
    assert (resumed / "records.jsonl").read_text() == records

    two_ranks(script, two, "refuse")
    assert all("pass resume=True" in (two / f"refused_{rank}").read_text() for rank in (0, 1))
    assert (two / "records.jsonl").read_text() == records, "the refused evaluation kept the file"
