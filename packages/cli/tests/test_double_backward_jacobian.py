"""Jacobian regularisation trains on every layer of the zoo (issue: it died with raw autograd errors on
S6, S5 and attention), and the CLI shows it: ``--jacobian-weight`` in ``run --help``, a pointer for
``--method jr``."""
from __future__ import annotations

import pytest
import torch
from advssm.adv_train import TrainConfig
from advssm.adv_train.methods import StepContext, get_method
from advssm.adv_train.trainer import optimizer_groups
from advssm.cli.main import cli
from advssm.ssm_layers import ModelConfig, build_model
from advssm.ssm_layers.layers import LAYERS
from click.testing import CliRunner

pytestmark = pytest.mark.filterwarnings("ignore::advssm.ssm_layers.ops.DoubleBackwardWarning")  # said, tested elsewhere
SMALL = {"mega": {"z_dim": 4}, "mamba2": {"head_dim": 4}}  # options that keep each layer tiny


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_one_step_of_jacobian_regularisation_trains_every_layer(layer):
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer=layer, d_input=1, d_model=8, d_state=4, n_layers=1, n_classes=3,
                                    layer_options=SMALL.get(layer, {})))
    x, y = torch.rand(4, 6, 1), torch.tensor([0, 1, 2, 0])
    cfg = TrainConfig(method="standard", epochs=1, jacobian_weight=0.5)
    ctx = StepContext(model, {"main": torch.optim.AdamW(optimizer_groups(model.parameters()), lr=1e-2)}, cfg,
                      torch.Generator().manual_seed(0), epoch=1)
    # the regulariser alone reaches the weights through the second derivative
    reg = ctx.regulariser(x)
    grads = torch.autograd.grad(reg, [p for p in model.parameters()], allow_unused=True)
    reached = [n for (n, _), g in zip(model.named_parameters(), grads) if g is not None and g.abs().sum() > 0]
    assert torch.isfinite(reg) and reg > 0 and any(".layer." in n for n in reached), reached
    before = [p.detach().clone() for p in model.parameters()]
    stats = get_method("standard", cfg).train_step(ctx, x, y)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step changed the weights"


def test_run_help_shows_the_jacobian_weight_and_jr_points_to_it(tmp_path):
    runner = CliRunner()
    assert "--jacobian-weight" in runner.invoke(cli, ["run", "--help"]).output
    result = runner.invoke(cli, ["run", "--method", "jr", "--dry-run"])
    assert result.exit_code != 0 and "add it to any method" in result.output and "--jacobian-weight W" in result.output
    result = runner.invoke(cli, ["run", "--jacobian-weight", "0.01", "--precision", "bf16", "--dry-run"])
    assert result.exit_code == 0 and "jacobian_weight = 0.01" in result.output and 'precision = "bf16"' in result.output
