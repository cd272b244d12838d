"""Our attacks against torchattacks 3.5.1's ports of the same attacks, in one run, on trained models.

    python benchmarks/bench_attacks.py --json attacks.json        # the measurement (minutes on 1 thread)
    python benchmarks/bench_attacks.py --quick                    # smoke test: reduced budgets, 1 repeat

Needs the ``bench`` extra of advssm-adv-train, installed WITHOUT dependencies, because torchattacks'
torchvision requirement otherwise replaces the CPU torch with a multi-GB CUDA build:

    pip install --no-deps torchattacks==3.5.1 && pip install numpy scikit-learn

What is measured, on the CPU, on one thread by default (the setting of issue 15's numbers):

- two models trained here, seeded, on scikit-learn's bundled 8x8 handwritten digits (1,347 train, 450 test;
  inputs (B, 1, 8, 8) in [0, 1]) with FGSM adversarial training from a random start at the Linf eps: an MLP
  (64-256-256-10) and a small S4D (a diagonal state space model written here in torch: 64-step pixel
  sequences, 2 layers, 32 channels, state size 16, FFT convolution), so that both a cheap model (where the
  attacks' own overhead dominates) and a sequence model are covered;
- on the first ``--n`` test examples, per model and norm (Linf eps 0.1, L2 eps 0.5): PGD-10 (the call the
  adversarial trainer makes every batch), each standard AutoAttack component on its own (APGD-CE, APGD-T with
  9 targets, FAB-T with 9 targets, Square with 5000 queries, p_init 0.8; 100 iterations each) and the whole
  standard AutoAttack ensemble, ours and torchattacks', each on the same examples. torchattacks' own
  ``AutoAttack`` class leaves its components at their default of 10 iterations (the original runs 100), so
  its side of the ensemble row is the original cascade built from its components with ``MultiAttack``;
- robust accuracy: clean-correct and still correct on the attack's output, over all ``--n`` examples (the
  same rule for both); seconds: the process's CPU time (``time.process_time``; with one thread it is what
  the attack costs, and other jobs on a shared machine inflate it far less than wall time), median of
  ``--repeats`` calls, ours and theirs interleaved; wall seconds are reported beside it; ratio = ours /
  theirs in CPU time (below 1: ours is faster);
- forward and backward passes per example, counted by a wrapper around the model (every example through the
  model is one forward pass, every input gradient one backward pass), the same wrapper for both.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from advssm.adv_train import APGD, APGDT, FAB, PGD, AutoAttack, Square
from torch import Tensor, nn

try:  # the bench extra: a peer from PyPI, measured in the same run
    import torchattacks
except ImportError as error:  # pragma: no cover - a message, not a fallback: nothing runs without the peer
    raise SystemExit("benchmarks/bench_attacks.py compares against torchattacks 3.5.1: "
                     "pip install --no-deps torchattacks==3.5.1 && pip install numpy scikit-learn") from error

EPS = {"Linf": 0.1, "L2": 0.5}
TRAIN_EPS = 0.1  # FGSM adversarial training at the Linf eps
FULL = {"steps": 100, "queries": 5000, "pgd_steps": 10}
QUICK = {"steps": 5, "queries": 100, "pgd_steps": 10}


# ---------------------------------------------------------------------------------------
# Models, written with torch only.
# ---------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class S4DKernelConv(nn.Module):
    """S4D (Gu et al. 2022): y = K * u + D u with the kernel K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n
    exp(dt A_n l)) of a diagonal complex state matrix A (S4D-Lin initialisation), by FFT convolution."""

    def __init__(self, channels: int, state: int = 16, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        half = state // 2
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_a_real = nn.Parameter(torch.log(0.5 * torch.ones(channels, half)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(half, dtype=torch.float32).repeat(channels, 1))
        self.c = nn.Parameter(torch.view_as_real(torch.randn(channels, half, dtype=torch.cfloat) * 0.5 ** 0.5))
        self.d = nn.Parameter(torch.randn(channels))

    def forward(self, u: Tensor) -> Tensor:  # (B, H, L)
        length = u.shape[-1]
        a = -torch.exp(self.log_a_real) + 1j * self.a_imag
        dt_a = a * torch.exp(self.log_dt)[:, None]
        c = torch.view_as_complex(self.c) * (torch.exp(dt_a) - 1) / a
        kernel = 2 * torch.einsum("hn,hnl->hl", c, torch.exp(dt_a[..., None] * torch.arange(length))).real
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(kernel, n=2 * length), n=2 * length)
        return y[..., :length] + u * self.d[:, None]


class S4D(nn.Module):
    """Pixels as a 64-step sequence: embedding, 2 residual S4D blocks (GELU, 1x1 mixing), mean pooling, head."""

    def __init__(self, channels: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(1, channels)
        self.blocks = nn.ModuleList(S4DKernelConv(channels) for _ in range(layers))
        self.mix = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(layers))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.flatten(1)[..., None])  # (B, L, H)
        for block, mix, norm in zip(self.blocks, self.mix, self.norms):
            z = norm(h).transpose(1, 2)
            h = h + mix(F.gelu(block(z))).transpose(1, 2)
        return self.head(h.mean(1))


def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits as (N, 1, 8, 8) in [0, 1]; the split the advssm CLI uses (75/25, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> nn.Module:
    """FGSM adversarial training from a random start (Wong et al. 2020) at TRAIN_EPS, Adam, seeded."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            xb, yb = x[idx], y[idx]
            delta = (torch.rand(xb.shape, generator=g) * 2 - 1) * TRAIN_EPS
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model((xb + delta).clamp(0, 1)), yb), delta)
            x_adv = (xb + (delta + 1.25 * TRAIN_EPS * grad.sign()).clamp(-TRAIN_EPS, TRAIN_EPS)).clamp(0, 1).detach()
            opt.zero_grad()
            F.cross_entropy(model(x_adv), yb).backward()
            opt.step()
    return model.eval()


# ---------------------------------------------------------------------------------------
# Counting passes.
# ---------------------------------------------------------------------------------------
class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter.backward += grad.shape[0]
        return grad, None


class Counted(nn.Module):
    """The model, counting the examples sent forward and the input gradients taken through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_ = self.backward = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_ += x.shape[0]
        if x.requires_grad:
            x = _CountBackward.apply(x, self)
        return self.model(x)

    def reset(self) -> None:
        self.forward_ = self.backward = 0


# ---------------------------------------------------------------------------------------
# The attacks, ours and torchattacks', at the same budgets.
# ---------------------------------------------------------------------------------------
def pair(name: str, model: nn.Module, norm: str, eps: float, budget: dict, seed: int):
    """(ours, theirs) for one row."""
    steps, queries = budget["steps"], budget["queries"]
    ta = torchattacks
    if name == "PGD-10":
        alpha = eps / 4
        return (PGD(model, eps, alpha=alpha, steps=budget["pgd_steps"], norm=norm, seed=seed),
                (ta.PGD if norm == "Linf" else ta.PGDL2)(model, eps=eps, alpha=alpha, steps=budget["pgd_steps"],
                                                         random_start=True))
    if name == "APGD-CE":
        return (APGD(model, norm=norm, eps=eps, steps=steps, loss="ce", seed=seed),
                ta.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed))
    if name == "APGD-T":
        return (APGDT(model, norm=norm, eps=eps, steps=steps, n_target_classes=9, seed=seed),
                ta.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed))
    if name == "FAB-T":
        return (FAB(model, norm=norm, eps=eps, steps=steps, n_target_classes=9, seed=seed),
                ta.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, multi_targeted=True, n_classes=10,
                       seed=seed))
    if name == "Square":
        return (Square(model, eps, n_queries=queries, p_init=0.8, norm=norm, seed=seed),
                ta.Square(model, norm=norm, eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, seed=seed))
    if name == "AutoAttack":
        # torchattacks.AutoAttack leaves its components at their default of 10 iterations (the original runs 100),
        # so the original ensemble is built from torchattacks' components with its MultiAttack cascade
        built = [pair(p, model, norm, eps, budget, seed) for p in ("APGD-CE", "APGD-T", "FAB-T", "Square")]
        if budget == FULL:
            ours = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed)
        else:
            ours = AutoAttack(model, norm=norm, eps=eps, version="custom", attacks=[o for o, _ in built], seed=seed)
        return ours, ta.MultiAttack([t for _, t in built])
    raise ValueError(name)


ROWS = ("PGD-10", "APGD-CE", "APGD-T", "FAB-T", "Square", "AutoAttack")


def measure(model: nn.Module, counted: Counted, x: Tensor, y: Tensor, norm: str, budget: dict, repeats: int,
            seed: int, rows=ROWS, progress=print) -> list[dict]:
    eps = EPS[norm]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    out = []
    for name in rows:
        ours, theirs = pair(name, counted, norm, eps, budget, seed)
        times = {"ours": [], "theirs": []}
        walls = {"ours": [], "theirs": []}
        results, passes = {}, {}
        for _ in range(repeats):
            for who, attack in (("ours", ours), ("theirs", theirs)):
                counted.reset()
                start, wall = time.process_time(), time.perf_counter()
                x_adv = attack(x, y)
                times[who].append(time.process_time() - start)
                walls[who].append(time.perf_counter() - wall)
                passes[who] = (counted.forward_ / len(x), counted.backward / len(x))
                with torch.no_grad():
                    results[who] = x_adv
        row = {"attack": name, "norm": norm, "eps": eps, "n": len(x), "budget": ours.describe()}
        for who in ("ours", "theirs"):
            with torch.no_grad():
                robust = clean & (model(results[who]).argmax(1) == y)
            dist = (results[who].detach() - x).flatten(1)
            size = dist.abs().amax(1) if norm == "Linf" else dist.norm(dim=1)
            row[who] = {"robust_acc": float(robust.float().mean()), "seconds": statistics.median(times[who]),
                        "wall_seconds": statistics.median(walls[who]),
                        "forward_per_example": passes[who][0], "backward_per_example": passes[who][1],
                        "max_norm": float(size.max())}
        row["ratio"] = row["ours"]["seconds"] / row["theirs"]["seconds"]
        row["clean_acc"] = float(clean.float().mean())
        o, t = row["ours"], row["theirs"]
        progress(f"  {name:<10} {norm:<4} ours {o['seconds']:8.3f} s  theirs {t['seconds']:8.3f} s  ratio "
                 f"{row['ratio']:.2f}  robust {o['robust_acc']:.3f} vs {t['robust_acc']:.3f}")
        out.append(row)
    return out


def run(n=100, repeats=3, quick=False, threads=1, seed=0, models=("mlp", "s4d"), norms=("Linf", "L2"),
        epochs=None, progress=print) -> dict:
    torch.set_num_threads(threads)
    budget = QUICK if quick else FULL
    x_tr, y_tr, x_te, y_te = digits()
    x, y = x_te[:n], y_te[:n]
    result = {"torch": torch.__version__, "torchattacks": torchattacks.__version__, "threads": threads, "n": n,
              "repeats": repeats, "quick": quick, "budget": budget, "models": {}, "rows": []}
    for name in models:
        torch.manual_seed(seed)
        start = time.perf_counter()
        model = train(MLP() if name == "mlp" else S4D(), x_tr, y_tr,
                      epochs or (30 if name == "mlp" else 20), seed)
        with torch.no_grad():
            test_acc = float((model(x_te).argmax(1) == y_te).float().mean())
        result["models"][name] = {"test_acc": test_acc, "train_seconds": time.perf_counter() - start,
                                  "parameters": sum(p.numel() for p in model.parameters())}
        progress(f"{name}: clean test accuracy {test_acc:.3f} (trained in {time.perf_counter() - start:.0f} s)")
        for norm in norms:
            for row in measure(model, Counted(model), x, y, norm, budget, repeats, seed, progress=progress):
                result["rows"].append({"model": name, **row})
    return result


def to_markdown(result: dict) -> str:
    lines = ["| model | attack | norm, eps | robust acc ours / torchattacks | CPU s ours / torchattacks | ratio | "
             "wall s ours / torchattacks | fwd / bwd passes per example, ours | torchattacks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        o, t = r["ours"], r["theirs"]
        lines.append(f"| {r['model']} | {r['attack']} | {r['norm']} {r['eps']:g} | {o['robust_acc']:.2f} / "
                     f"{t['robust_acc']:.2f} | {o['seconds']:.3g} / {t['seconds']:.3g} | **{r['ratio']:.2f}** | "
                     f"{o['wall_seconds']:.3g} / {t['wall_seconds']:.3g} | "
                     f"{o['forward_per_example']:.0f} / {o['backward_per_example']:.0f} | "
                     f"{t['forward_per_example']:.0f} / {t['backward_per_example']:.0f} |")
    models = ", ".join(f"{k} clean {v['test_acc']:.3f} on the 450 test digits" for k, v in result["models"].items())
    budget = result["budget"]
    lines += ["", f"- models (FGSM-trained at Linf {TRAIN_EPS}): {models}; attacks on the first {result['n']} test "
              "examples; robust acc = clean-correct and correct after the attack",
              f"- budgets: {budget['steps']} iterations (APGD, APGD-T and FAB-T with 9 targets), Square "
              f"{budget['queries']} queries, PGD {budget['pgd_steps']} steps of eps/4"
              + (" (--quick: reduced, smoke test only)" if result["quick"] else " (standard AutoAttack)"),
              f"- CPU s: process CPU time, median of {result['repeats']} calls, ours and torchattacks interleaved; "
              "ratio = ours / torchattacks in CPU time; torch "
              f"{result['torch']}, torchattacks {result['torchattacks']}, {result['threads']} thread(s)"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test examples attacked")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per attack (median reported)")
    parser.add_argument("--quick", action="store_true", help="reduced budgets, 1 repeat, 20 examples (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--models", nargs="+", default=["mlp", "s4d"], choices=["mlp", "s4d"])
    parser.add_argument("--norms", nargs="+", default=["Linf", "L2"], choices=["Linf", "L2"])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: MLP 30, S4D 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--n, --repeats and --threads must be >= 1")
    n, repeats = (min(args.n, 20), 1) if args.quick else (args.n, args.repeats)
    result = run(n, repeats, args.quick, args.threads, args.seed, tuple(args.models), tuple(args.norms), args.epochs,
                 progress=lambda line: print(line, flush=True))
    print(to_markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
