"""advssm convert: a Mamba-2 folder in transformers' layout (written here from advssm's own Mamba2 layers,
whose parameter names are Mamba2Mixer's) becomes an advssm checkpoint; attacks run on it in the box.
The parity with transformers itself is tested in packages/ssm-layers/tests/test_pretrained.py."""
import json

import torch
from advssm.adv_train.attacks import PGD
from advssm.ssm_layers import load_checkpoint
from advssm.ssm_layers.layers import Mamba2
from advssm.ssm_layers.pretrained import load_pretrained
from safetensors.torch import save_file

CONFIG = {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "hidden_size": 16, "num_heads": 4,
          "head_dim": 8, "n_groups": 2, "state_size": 4, "num_hidden_layers": 2, "vocab_size": 30, "chunk_size": 8,
          "expand": 2, "conv_kernel": 4, "layer_norm_epsilon": 1e-5, "hidden_act": "silu", "use_bias": False,
          "use_conv_bias": True, "time_step_limit": [0.0, {"__float__": "Infinity"}], "residual_in_fp32": True,
          "tie_word_embeddings": False}


def _folder(tmp_path, **changes):
    folder = tmp_path / "mamba2-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**CONFIG, **changes}))
    torch.manual_seed(0)
    tensors = {"backbone.embeddings.weight": torch.randn(30, 16), "backbone.norm_f.weight": 1 + torch.rand(16),
               "lm_head.weight": torch.randn(30, 16)}
    for i in range(2):
        layer = Mamba2(16, d_state=4, head_dim=8, n_groups=2, chunk_size=8)
        tensors.update({f"backbone.layers.{i}.mixer.{k}": v.detach().clone() for k, v in layer.state_dict().items()})
        tensors[f"backbone.layers.{i}.norm.weight"] = 1 + torch.rand(16)
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_convert_writes_a_checkpoint_that_attacks_run_on(tmp_path, helpers):
    folder, out = _folder(tmp_path), tmp_path / "m.safetensors"
    result = helpers.invoke("convert", folder, out, "--n-classes", "3", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["layer"] == "mamba2" and info["format"] == "transformers" and info["n_classes"] == 3
    model, meta = load_checkpoint(out)
    assert meta["user"]["converted_from"]["vocab_size"] == 30
    assert model.config.norm == "rmsnorm" and not model.config.embed_norm and model.config.prenorm
    # the same model as load_pretrained builds (same seed for the head)
    pretrained = load_pretrained(folder, n_classes=3)
    x = pretrained.inputs(torch.randint(0, 30, (4, 12), generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(model(x), pretrained.model(x), rtol=0, atol=0)
    # an Linf attack in the box: stays in [0, 1] and within eps, and raises the loss
    y = model(x).argmax(-1)
    x_adv = PGD(model, eps=0.05, alpha=0.02, steps=5, seed=0)(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.05 + 1e-6
    loss = torch.nn.functional.cross_entropy
    assert loss(model(x_adv), y) > loss(model(x), y)
    # no silent overwrite
    again = helpers.invoke("convert", folder, out)
    assert again.exit_code == 2 and "pass --overwrite" in again.output
    assert helpers.invoke("convert", folder, out, "--overwrite", "--box", "cube").exit_code == 0


def test_convert_refuses_what_it_cannot_map(tmp_path, helpers):
    folder = _folder(tmp_path, use_bias=True)
    result = helpers.invoke("convert", folder, tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert "use_bias = true is not supported" in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_fine_tune_a_pretrained_backbone_with_pgd_at(tmp_path):
    """The documented recipe: token data through the box, the box map frozen, one epoch of PGD-AT."""
    from advssm.adv_train.config import TrainConfig
    from advssm.adv_train.trainer import Trainer
    from torch.utils.data import TensorDataset

    pretrained = load_pretrained(_folder(tmp_path), n_classes=2)
    model = pretrained.model
    model.embedding.requires_grad_(False)  # keep the box fixed
    box = model.embedding.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (24, 10), generator=g)
    data = TensorDataset(pretrained.inputs(ids), (ids[:, 0] < 15).long())  # a toy label: the first token's id
    config = TrainConfig(method="pgd-at", epochs=1, lr=1e-3, eps=0.05, alpha=0.02, batch_size=8, attack_steps=2,
                         eval_pgd_steps=2, aa_every=0, device="cpu")
    summary = Trainer(model, data, data, config).fit()
    assert summary["last"]["clean_acc"] is not None
    torch.testing.assert_close(model.embedding.weight, box, rtol=0, atol=0)
    assert model.blocks[0].layer.in_proj.weight.grad is not None  # the backbone was trained
