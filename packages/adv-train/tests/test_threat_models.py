"""Threat-model builders (positions are tokens: a sequence's time steps, an image's pixels in raster order
across channels), their names, the command-line syntax, the position sweep, and the one attack builder."""
import pytest
import torch
from advssm.adv_train import threat_models as tm
from advssm.adv_train.attacks import APGD, ATTACK_NAMES, ATTACKS, FGSM, PGD, AutoAttack, build
from torch import nn

SEQ = torch.rand(2, 10, 3)
IMG = torch.rand(2, 3, 4, 5)


@pytest.mark.parametrize(("model", "name", "positions"), [
    (tm.window(start=2, length=3), "window(start=2,length=3)", [2, 3, 4]),
    (tm.prefix(2), "prefix(k=2)", [0, 1]),
    (tm.suffix(3), "suffix(k=3)", [7, 8, 9]),
])
def test_sequence_threat_models(model, name, positions):
    mask = model.mask(SEQ)
    assert model.name == name and str(model) == name
    assert mask.shape == (1, 10, 1) and mask.dtype == torch.bool
    assert mask.flatten().nonzero().flatten().tolist() == positions


def test_random_positions_are_seeded_and_shared_by_the_batch():
    a, b = tm.random_positions(4, seed=1).mask(SEQ), tm.random_positions(4, seed=1).mask(SEQ)
    assert torch.equal(a, b) and int(a.sum()) == 4 and a.shape == (1, 10, 1)
    assert not torch.equal(a, tm.random_positions(4, seed=2).mask(SEQ))
    assert tm.random_positions(4, seed=1).name == "random(k=4,seed=1)"


def test_image_positions_are_pixels_in_raster_order_across_channels():
    mask = tm.window(start=4, length=3).mask(IMG)  # pixels 4, 5, 6 of a 4 x 5 image: (0, 4), (1, 0), (1, 1)
    assert mask.shape == (1, 1, 4, 5)
    assert mask[0, 0].nonzero().tolist() == [[0, 4], [1, 0], [1, 1]]
    assert int(mask.expand(IMG.shape)[0].sum()) == 3 * 3  # all three channels of each pixel
    # the pixel order of a pixel-level sequence model: (B, C, H, W) -> (B, H*W, C)
    tokens = IMG.flatten(2).transpose(1, 2)
    assert torch.equal(tokens[:, 4:7], (IMG * mask).flatten(2).transpose(1, 2)[:, 4:7])
    patch = tm.patch(top=1, left=2, size=2)
    assert patch.name == "patch(top=1,left=2,size=2)"
    assert patch.mask(IMG)[0, 0].nonzero().tolist() == [[1, 2], [1, 3], [2, 2], [2, 3]]


@pytest.mark.parametrize(("make", "x", "message"), [
    (lambda: tm.window(8, 4), SEQ, r"does not fit an input of 10 positions"),
    (lambda: tm.suffix(11), SEQ, "does not fit"),
    (lambda: tm.random_positions(11), SEQ, "11 positions asked of an input with 10"),
    (lambda: tm.patch(3, 0, 2), IMG, "does not fit a 4 x 5 image"),
    (lambda: tm.patch(0, 0, 2), SEQ, "needs images"),
    (lambda: tm.window(-1, 2), SEQ, "start must be an integer >= 0"),
    (lambda: tm.prefix(0), SEQ, "k must be an integer >= 1"),
])
def test_errors_name_the_problem(make, x, message):
    with pytest.raises(ValueError, match=message):
        make().mask(x)


def test_parse_the_command_line_forms():
    assert tm.parse("window:100:64") == tm.window(100, 64)
    assert tm.parse("prefix:16") == tm.prefix(16)
    assert tm.parse("SUFFIX:8") == tm.suffix(8)
    assert tm.parse("random:8") == tm.random_positions(8, seed=0)
    assert tm.parse("random:8:3") == tm.random_positions(8, seed=3)
    assert tm.parse("patch:0:1:8") == tm.patch(0, 1, 8)
    assert tm.parse("full") is None
    with pytest.raises(ValueError, match="unknown threat model 'box:3'; write one of window:START:LEN"):
        tm.parse("box:3")
    with pytest.raises(ValueError, match="write window:START:LEN with non-negative integers"):
        tm.parse("window:3")
    with pytest.raises(ValueError, match="write prefix:K"):
        tm.parse("prefix:-2")


def test_sweep_covers_every_position_and_ends_at_the_last():
    names = [t.name for t in tm.sweep(10, 4)]
    assert names == ["window(start=0,length=4)", "window(start=4,length=4)", "window(start=6,length=4)"]
    assert [t.positions(10)[0].item() for t in tm.sweep(10, 4, stride=3)] == [0, 3, 6]
    with pytest.raises(ValueError, match="does not fit"):
        tm.sweep(3, 4)
    assert tm.n_positions(IMG) == 20 and tm.n_positions(SEQ) == 10


def test_one_builder_for_every_attack_name():
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 4))
    assert ATTACKS == ("fgsm", "pgd", *ATTACK_NAMES, "aa")
    built = {name: build(name, model, eps=0.1, seed=0) for name in ATTACKS}
    assert isinstance(built["fgsm"], FGSM) and isinstance(built["pgd"], PGD) and isinstance(built["aa"], AutoAttack)
    assert isinstance(built["apgd-ce"], APGD) and built["apgd-ce"].steps == 100
    pgd = build("pgd", model, eps=0.1, norm="L2", steps=7, alpha=0.02, seed=3)
    assert (pgd.steps, pgd.alpha, pgd.norm, pgd.seed) == (7, 0.02, "L2", 3)
    assert build("pgd", model, eps=0.2).alpha == pytest.approx(0.05)  # eps / 4
    custom = build("aa", model, eps=0.1, aa_version="custom", aa_attacks=["apgd-ce", "square"], aa_steps=3)
    assert list(custom.attacks) == ["apgd-ce", "square"]  # named as listed, not by class
    assert custom.attacks["square"].n_queries == 150 and custom.attacks["apgd-ce"].steps == 3
    assert build("aa", model, eps=0.1, aa_version="rand").version == "rand"
    with pytest.raises(ValueError, match="unknown attack 'pgd2'; choose from fgsm, pgd, apgd-ce"):
        build("pgd2", model, eps=0.1)
    with pytest.raises(ValueError, match="steps and alpha are PGD's settings"):
        build("apgd-ce", model, eps=0.1, steps=3)
    with pytest.raises(ValueError, match="aa_version and aa_attacks set AutoAttack"):
        build("pgd", model, eps=0.1, aa_version="rand")
    with pytest.raises(ValueError, match="unknown AutoAttack version"):
        build("aa", model, eps=0.1, aa_version="plus")
