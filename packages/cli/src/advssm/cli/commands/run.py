"""``advssm run``: train and evaluate one experiment (by default ST vs PGD-AT on the bundled digits)."""
from __future__ import annotations

import click
from advssm.adv_train.config import METHOD_NAMES
from advssm.ssm_layers.layers import LAYERS
from advssm.ssm_layers.layers.scans import SCANS

from ..experiment.spec import PRESETS, parse_assignment
from ._launch import common_options, launch, resolve_or_resume, tracker_overrides

# flag -> dotted setting
FLAG_SETTINGS = {
    "preset": "preset", "model": "model.layer", "method": "grid.method", "ads": "ads", "epochs": "train.epochs",
    "dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download", "eps": "train.eps",
    "alpha": "train.alpha", "d_model": "model.d_model", "n_layers": "model.n_layers", "d_state": "model.d_state",
    "train_size": "data.train_size", "test_size": "data.test_size", "seed": "train.seed", "device": "train.device",
    "name": "name", "tiny_classes": "data.tiny_classes", "lr": "train.lr", "batch_size": "train.batch_size",
    "eps_warmup_epochs": "train.eps_warmup_epochs", "init_from": "train.init_from", "select_on": "train.select_on",
    "select_by": "train.select_by", "jacobian_weight": "train.jacobian_weight", "precision": "train.precision",
    "patch_size": "model.patch_size", "scan": "model.scan",
}


class PatchSize(click.ParamType):
    """--patch-size: a positive int, or none (pixels as tokens)."""

    name = "INT|none"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == "none":
            return value if isinstance(value, int) else "none"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a patch size (an int such as 4) nor none", param, ctx)


@click.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="The paper's model and protocol for a data set "
              "(paper-*), or a small vision model (vim-*, vmamba-*) under that protocol.")
@click.option("--model", help=f"Layer: {', '.join(LAYERS)}.")
@click.option("--method", help=f"Training method: {', '.join(METHOD_NAMES)}; "
              "comma-separated for one cell each (standard,pgd-at).")
@click.option("--ads", help="Adaptive Scaling activation: none, relu, sigmoid, tanh.")
@click.option("--epochs", type=int)
@click.option("--dataset", help="digits (bundled), mnist1d, mnist, cifar10, tinyimagenet.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data set's files.")
@click.option("--download", is_flag=True, default=None, help="Fetch MNIST / CIFAR-10 with torchvision.")
@click.option("--eps", type=float, help="Linf budget of training and evaluation attacks.")
@click.option("--alpha", type=float, help="PGD step size.")
@click.option("--patch-size", type=PatchSize(), help="Images as non-overlapping PxP patch tokens (none: pixels).")
@click.option("--scan", type=click.Choice(SCANS), help="Token order(s) of every layer: causal, bidirectional (Vim), "
              "cross2d (VMamba's four 2-D directions).")
@click.option("--d-model", type=int)
@click.option("--n-layers", type=int)
@click.option("--d-state", type=int)
@click.option("--train-size", type=int, help="Keep the first N training examples.")
@click.option("--test-size", type=int, help="Keep the first N test examples.")
@click.option("--tiny-classes", type=int, help="Tiny-ImageNet: keep the first K classes of wnids.txt (paper: 50).")
@click.option("--seed", type=int, help="The one seed of the run.")
@click.option("--device", help="cpu, cuda, cuda:N or auto.")
@click.option("--lr", type=float, help="AdamW learning rate (with --resume: continue at this rate).")
@click.option("--batch-size", type=int, help="Global batch size (with --resume: continue with it).")
@click.option("--eps-warmup-epochs", type=int, help="Ramp the training eps up over the first K epochs (0 = off).")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start from this checkpoint's weights "
              "(the same architecture).")
@click.option("--select-on", type=click.Choice(["test", "val"]), help="Choose Best on the test set (the paper) "
              "or on a slice held out from the training set (train.val_n examples).")
@click.option("--select-by", type=click.Choice(["auto", "pgd", "clean"]),
              help="Choose Best by PGD or clean accuracy (auto: clean for standard training, PGD otherwise).")
@click.option("--jacobian-weight", type=float, metavar="W", help="Jacobian regularisation, added to any method: "
              "the loss gains W x ||d logits / d x||_F^2 on the clean batch (0 = off; e.g. 0.01).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="Autocast dtype of the model's "
              "forward in training and evaluation (SSM cores, losses and attacks stay fp32); fp16 needs CUDA.")
@click.option("--name", help="Experiment name (used in the run folder's name).")
@common_options
def run(config_file, out, runs_root, resume, dry_run, as_json, assignments, progress, **flags):
    """Train and evaluate: clean, PGD-10 and AutoAttack accuracy of the best and last checkpoints.

    With no arguments: a small S4D on scikit-learn's bundled 8x8 digits, standard training vs PGD-AT
    (eps 0.1, 15 epochs), a few minutes on 2 CPU cores, no download. CONFIG_FILE is a TOML experiment; flags
    override it. Ctrl-C leaves a resumable folder.

    \b
    Examples:
      advssm run
      advssm run --model s6 --method trades --ads relu --epochs 5
      advssm run --model s6 --method pgd-at --jacobian-weight 0.01 --precision bf16
      advssm run --method standard,trades --dataset mnist --data-dir ~/data --train-size 4000 --test-size 500
      advssm run --preset paper-mnist --data-dir ~/data --model s4
      advssm run --patch-size 2 --scan cross2d
      advssm run --preset vim-cifar10 --data-dir ~/data
      advssm run exp.toml --set train.aa_every=2 --out runs/exp1
      advssm run --dry-run --dataset cifar10
      advssm run --resume runs/20260101-120000-run
      advssm run --resume runs/20260101-120000-run --lr 1e-3   # after a NaN stop
      advssm run --method pgd-at --init-from runs/X/standard/best.safetensors --eps-warmup-epochs 5
      advssm run --tracker tensorboard --tracker mlflow
    """
    overrides = {**tracker_overrides(flags.pop("trackers")),
                 **{FLAG_SETTINGS[k]: v for k, v in flags.items() if v is not None}}
    if "grid.method" in overrides:
        overrides["grid.method"] = [m.strip() for m in overrides["grid.method"].split(",") if m.strip()]
    overrides.update(parse_assignment(a) for a in assignments)
    spec, run_dir, changes = resolve_or_resume(config_file, resume, overrides)
    launch(spec, run_dir, out, runs_root, dry_run, as_json, progress, command="run", changes=changes)
