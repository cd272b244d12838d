"""Why PGD-AT of our S4D does not leave chance at small scale on 784-step digits (issue 14), measured.

Two parts, each printing a table and writing its rows to the JSON file:

* ``init``: each model variant at initialisation, over several init seeds, on one batch of ``digits28``
  training images: the clean and PGD cross-entropy, how much the logits vary across the batch, the
  gradient norm of the PGD loss per block (embedding, each block's SSM parameters, its output
  projection, its norm, the head), and the RMS ratio of each layer's output to its input.
* ``train``: PGD-AT loss curves of the variants through ``advssm.adv_train.Trainer`` (the Python API the CLI
  uses), per epoch: training loss on the adversarial examples, training adversarial accuracy, test clean
  and PGD accuracy (PGD with the full eps, ``--eval-n`` test examples). ``--warmup K`` ramps the training
  eps up over K epochs; ``--init-from-standard E`` first trains E standard epochs and starts PGD-AT from
  those weights (the ``--init-from`` workflow, done here by loading a state dict before the Trainer).

Variants: ``ours`` is ``build_model`` (Linear embedding + LayerNorm, post-norm blocks, S4D with GLU output,
C ~ CN(0, 1), i.e. real and imaginary parts each of variance 1/2, as ``torch.randn(..., dtype=cfloat)`` and
the S4 code draw it); ``ours-noglu`` the same with ``layer_options={"glu": False}``; ``ours-c0.5`` with
E|C|^2 = 1/2 (each part of variance 1/4); ``ours-noembednorm`` without the LayerNorm after the embedding;
``plain`` an S4D written here from the S4D paper's formulas (Linear encoder, no embedding norm, conv + D u,
GELU, then Linear(H, H), no GLU, C with each part of variance 1/2, post-norm residual, mean pooling, linear
decoder); ``plain-c0.5`` the same with E|C|^2 = 1/2.

Example (what docs/reproducing.md quotes; one thread per run, since the dev machine is shared)::

    python benchmarks/at_start.py init --seeds 5 --json init.json
    python benchmarks/at_start.py train --variants ours plain --train-size 512 --epochs 6 --json train.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from advssm.adv_train import TrainConfig, Trainer
from advssm.adv_train.attacks import PGD
from advssm.cli.data import load_dataset
from advssm.ssm_layers import ModelConfig, build_model
from advssm.ssm_layers.layers.s4d import log_timescales
from advssm.ssm_layers.ops import fft_conv, vandermonde_kernel
from torch import nn

VARIANTS = ("ours", "ours-noglu", "ours-c0.5", "ours-noembednorm", "plain", "plain-c0.5")


# -- the plain S4D, from the S4D paper's formulas -------------------------------------------------------------

class PlainS4D(nn.Module):
    """S4D-Lin with ZOH, written from the S4D paper: y = K * u + D u, GELU, Linear(H, H) (no GLU).

    Parameter names follow ours (C, D, log_dt, log_A_real, A_imag, output_linear) so the tables line up.
    """

    def __init__(self, d_model: int, d_state: int, c_var: float = 1.0):
        super().__init__()
        H, N = d_model, d_state // 2
        self.D = nn.Parameter(torch.randn(H))
        # E|C|^2 = c_var: real and imaginary parts each with variance c_var / 2
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N, dtype=torch.cfloat) * math.sqrt(c_var)))
        self.log_dt = nn.Parameter(log_timescales(H, 1e-3, 1e-1))
        self.log_A_real = nn.Parameter(torch.full((H, N), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float).repeat(H, 1))
        self.output_linear = nn.Linear(H, H)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        A = torch.complex(-self.log_A_real.exp(), self.A_imag)
        dtA = A * self.log_dt.exp()[:, None]
        C = torch.view_as_complex(self.C) * (dtA.exp() - 1) / A
        K = vandermonde_kernel(C, dtA, u.shape[1], backend="torch")
        y = fft_conv(u.transpose(1, 2), K, self.D, backend="torch").transpose(1, 2)
        return self.output_linear(F.gelu(y))


class PlainBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int, c_var: float):
        super().__init__()
        self.layer, self.norm = PlainS4D(d_model, d_state, c_var), nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.layer(x))


class PlainClassifier(nn.Module):
    """Linear encoder -> post-norm S4D blocks -> mean over the sequence -> Linear decoder (images as pixel tokens)."""

    def __init__(self, d_model: int, d_state: int, n_layers: int, n_classes: int = 10, c_var: float = 1.0):
        super().__init__()
        self.embedding = nn.Linear(1, d_model)
        self.blocks = nn.ModuleList(PlainBlock(d_model, d_state, c_var) for _ in range(n_layers))
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x.flatten(1)[..., None])
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(dim=1))


def build_variant(name: str, d_model: int, d_state: int, n_layers: int) -> nn.Module:
    """The model ``name`` (see the module docstring), drawn from torch's global RNG."""
    if name.startswith("plain"):
        return PlainClassifier(d_model, d_state, n_layers, c_var=0.5 if name == "plain-c0.5" else 1.0)
    options = {"glu": False} if name == "ours-noglu" else {}
    model = build_model(ModelConfig(layer="s4d", d_model=d_model, d_state=d_state, n_layers=n_layers,
                                    layer_options=options))
    if name == "ours-c0.5":
        with torch.no_grad():
            for block in model.blocks:
                block.layer.C.mul_(math.sqrt(0.5))
    elif name == "ours-noembednorm":
        model.embed_norm = nn.Identity()
    elif name not in ("ours", "ours-noglu"):
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return model


# -- part 1: the model at initialisation --------------------------------------------------------------------

SSM_NAMES = ("C", "D", "log_dt", "log_A_real", "A_imag")


def group_of(param_name: str) -> str:
    """The table column of a parameter: embedding, blocks.i.ssm / .proj / .norm, head."""
    parts = param_name.split(".")
    if parts[0] == "blocks":
        i, rest = parts[1], parts[2:]
        if rest[0] == "norm":
            return f"b{i}.norm"
        return f"b{i}.proj" if rest[1] == "output_linear" else f"b{i}.ssm"
    return "embedding" if parts[0] in ("embedding", "embed_norm") else parts[0]


def init_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
             seed: int) -> dict:
    """Losses, logit spread, per-group gradient norms of the PGD loss and layer output/input RMS ratios."""
    model.eval()
    ratios: dict[str, float] = {}
    hooks = [block.layer.register_forward_hook(
        lambda mod, inp, out, i=i: ratios.__setitem__(f"b{i}.out/in", float(out.pow(2).mean().sqrt()
                                                                           / inp[0].pow(2).mean().sqrt())))
        for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    x_in = x.clone().requires_grad_(True)
    clean = F.cross_entropy(model(x_in), y)
    (gx,) = torch.autograd.grad(clean, x_in)
    x_adv = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True, seed=seed)(x, y)
    model.zero_grad(set_to_none=True)
    adv = F.cross_entropy(model(x_adv), y)
    adv.backward()
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = group_of(name)
            sq[key] = sq.get(key, 0.0) + float(p.grad.pow(2).sum())
    model.zero_grad(set_to_none=True)
    return {"clean_ce": float(clean.detach()), "pgd_ce": float(adv.detach()),
            "logit_std": float(logits.std(dim=0).mean()),  # across the batch: how much the input matters
            "eps_grad_l1": float(eps * gx.abs().flatten(1).sum(1).mean() * len(x)),  # per-example 1st-order gain
            **ratios, **{f"grad.{k}": math.sqrt(v) for k, v in sq.items()}}


def run_init(args, data) -> list[dict]:
    x, y = data.train.tensors
    x, y = x[:args.batch_size], y[:args.batch_size]
    rows = []
    for variant in args.variants:
        per_seed = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = build_variant(variant, args.d_model, args.d_state, args.n_layers)
            per_seed.append(init_row(model, x, y, args.eps, args.alpha, args.attack_steps, seed))
        keys = per_seed[0].keys()
        rows.append({"variant": variant, "seeds": args.seeds,
                     **{k: statistics.median(r[k] for r in per_seed) for k in keys}})
    cols = ["clean_ce", "pgd_ce", "logit_std", "eps_grad_l1"] + sorted(k for k in rows[0] if "/" in k) + \
        ["grad." + g for g in ("embedding", "b0.ssm", "b0.proj", "b0.norm", "b1.ssm", "b1.proj", "b1.norm", "head")]
    cols = [c for c in cols if c in rows[0]]
    print(f"\nAt initialisation: medians over {args.seeds} init seeds, one batch of {len(x)} digits28 training "
          f"images; PGD-{args.attack_steps} eps {args.eps} alpha {args.alpha}; grad.* = ||d CE(PGD example) / d "
          "params|| per group; eps_grad_l1 = eps * ||d CE_i / d x_i||_1, a Linf attack's first-order gain per example")
    print("| variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['variant']} | " + " | ".join(f"{r[c]:.3g}" for c in cols) + " |")
    return rows


# -- part 2: PGD-AT loss curves ---------------------------------------------------------------------------

class Record:
    """Trainer callback: keeps each epoch's metrics and prints one line per epoch."""

    def __init__(self, label: str):
        self.label, self.epochs = label, []

    def on_epoch_end(self, trainer, epoch, metrics):
        keep = {k: metrics[k] for k in ("epoch", "train_loss", "train_adv_acc", "train_clean_acc", "clean_acc",
                                        "pgd_acc", "train_time")}
        self.epochs.append(keep)
        print(f"  {self.label} epoch {epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in keep.items()
                                                          if k != "epoch" and v is not None),
              file=sys.stderr, flush=True)


def train_variant(args, data, variant: str) -> dict:
    torch.manual_seed(args.seed)
    model = build_variant(variant, args.d_model, args.d_state, args.n_layers)
    common = dict(lr=args.lr, batch_size=args.batch_size, scheduler=args.scheduler, eps=args.eps, alpha=args.alpha,
                  attack_steps=args.attack_steps, eval_pgd_steps=args.attack_steps, eval_n=args.eval_n, aa_every=0,
                  seed=args.seed)
    standard_epochs = []
    if args.init_from_standard:
        record = Record(f"{variant} standard")
        Trainer(model, data.train, data.test, TrainConfig(method="standard", epochs=args.init_from_standard,
                                                          **common), callbacks=[record]).fit()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(args.seed + 1)
        model = build_variant(variant, args.d_model, args.d_state, args.n_layers)
        model.load_state_dict(state)  # what --init-from does: weights of another run into a fresh model
        standard_epochs = record.epochs
    label = variant + ("" if args.method == "pgd-at" else f" {args.method}") + \
        (f" warmup {args.warmup}" if args.warmup else "") + \
        (f" init-from {args.init_from_standard} ST epochs" if args.init_from_standard else "")
    record = Record(label)
    start = time.perf_counter()
    Trainer(model, data.train, data.test, TrainConfig(method=args.method, epochs=args.epochs,
                                                      eps_warmup_epochs=args.warmup, **common),
            callbacks=[record]).fit()
    return {"variant": variant, "label": label, "method": args.method, "warmup": args.warmup,
            "init_from_standard": args.init_from_standard,
            "standard_epochs": standard_epochs, "epochs": record.epochs, "wall_s": time.perf_counter() - start}


def run_train(args, data) -> list[dict]:
    runs = [train_variant(args, data, v) for v in args.variants]
    print(f"\n{args.method} on {args.dataset} ({len(data.train)} training images, batch {args.batch_size}, "
          f"lr {args.lr} {args.scheduler}, PGD-{args.attack_steps} eps {args.eps} alpha {args.alpha}; test clean / PGD-"
          f"{args.attack_steps} (full eps) on the first {args.eval_n} test images; chance = 0.1, ln 10 = 2.303)")
    print("| run | epoch | train loss | train acc (adv for AT) | test clean | test PGD |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        for e in run["epochs"]:
            train_acc = e["train_adv_acc"] if e["train_adv_acc"] is not None else e["train_clean_acc"]
            print(f"| {run['label']} | {e['epoch']} | {e['train_loss']:.3f} | {train_acc:.3f} | "
                  f"{e['clean_acc']:.3f} | {e['pgd_acc']:.3f} |")
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("init", "train"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--dataset", default="digits28", help="digits28 (784 steps) or digits (64 steps)")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=None, help="PGD step (default eps / 4)")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="init seeds (init part)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (train part)")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default all 1,347)")
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--scheduler", choices=("cosine", "none"), default="cosine")
    parser.add_argument("--method", default="pgd-at", choices=("pgd-at", "standard"), help="train part")
    parser.add_argument("--warmup", type=int, default=0, help="eps_warmup_epochs")
    parser.add_argument("--init-from-standard", type=int, default=0, metavar="E",
                        help="start PGD-AT from the weights of E standard-training epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if args.alpha is None:
        args.alpha = args.eps / 4
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, train_size=args.train_size)
    rows = run_init(args, data) if args.part == "init" else run_train(args, data)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"part": args.part, "settings": vars(args), "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
