"""Each method's loss and update against a hand computation on linear models, in float64.

On a 2-class linear model logits = W x + b the loss moves with x only through s . x where
s = W[y] - W[other]; the Linf-worst example is the corner x - eps * sign(s), and every gradient has a
closed form, so the methods' adversarial examples, losses and updates can be written out directly.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from advssm.adv_train.config import TrainConfig
from advssm.adv_train.methods import (
    METHODS,
    NonFiniteLossError,
    StepContext,
    TrainMethod,
    get_method,
    jacobian_frobenius_sq,
    mart_loss,
)
from torch import nn

EPS = 0.1
TOL = dict(rtol=1e-10, atol=1e-12)


def linear(n_in=2, n_out=2, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(n_out, n_in, dtype=torch.float64))
    return model


def batch(n=6, d=2, classes=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)  # away from the box edges
    return x, torch.randint(classes, (n,), generator=g)


def context(model, method="standard", lr=0.05, seed=3, **cfg):
    config = TrainConfig(method=method, eps=EPS, alpha=EPS, attack_steps=3, **cfg)
    method_obj = get_method(method, config)
    opts = {k: torch.optim.SGD(ps, lr=lr) for k, ps in method_obj.param_groups(model).items() if ps}
    return method_obj, StepContext(model, opts, config, torch.Generator().manual_seed(seed))


def worst_corner(model, x, y):
    """x - eps * sign(W[y] - W[1 - y]): the exact Linf maximiser of the CE of a 2-class linear model."""
    w = model.weight.detach()
    s = w[y] - w[1 - y]
    return (x - EPS * s.sign()).clamp(0, 1)


def ce(logits, y):
    return -(logits.log_softmax(1).gather(1, y[:, None])).mean()


def test_registry_names_every_method():
    assert set(METHODS) == {"standard", "pgd-at", "trades", "mart", "free-at", "yopo", "fast-at", "gaussian"}
    assert all(issubclass(c, TrainMethod) for c in METHODS.values())
    with pytest.raises(ValueError, match="unknown training method 'foo'; choose one of standard"):
        get_method("foo", TrainConfig())


def test_standard_loss_and_step():
    model = linear()
    x, y = batch()
    method, ctx = context(model)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    loss, stats = method.loss(ctx, x, y)
    p = torch.softmax(x @ w0.T + b0, 1)
    torch.testing.assert_close(loss, ce(x @ w0.T + b0, y), **TOL)
    assert stats["n"] == 6 and stats["clean_correct"] == float((p.argmax(1) == y).sum())
    method.train_step(ctx, x, y)
    g = (p - F.one_hot(y, 2)) / len(y)  # dCE/dlogits
    torch.testing.assert_close(model.weight.detach(), w0 - 0.05 * g.T @ x, **TOL)
    torch.testing.assert_close(model.bias.detach(), b0 - 0.05 * g.sum(0), **TOL)


def test_pgd_at_trains_on_the_worst_corner():
    model = linear()
    x, y = batch()
    method, ctx = context(model, "pgd-at")
    loss, stats = method.loss(ctx, x, y)
    logits = worst_corner(model, x, y) @ model.weight.T + model.bias
    torch.testing.assert_close(loss, ce(logits, y), **TOL)
    assert stats["adv_correct"] == float((logits.argmax(1) == y).sum()) and "clean_correct" not in stats
    assert model.weight.grad is None  # the attack leaves no gradient on the weights


def test_trades_example_and_loss():
    model = linear()
    x, y = batch()
    method, ctx = context(model, "trades", trades_beta=2.0)
    state = ctx.generator.get_state()
    x_adv = method.perturb(ctx, x)
    s = (model.weight[1] - model.weight[0]).detach().sign()
    # KL grows with |change of the logit gap| whichever way it moves: the example is one of the two corners
    assert all(torch.allclose(d, EPS * s) or torch.allclose(d, -EPS * s) for d in x_adv - x)
    ctx.generator.set_state(state)
    loss, _ = method.loss(ctx, x, y)
    with torch.no_grad():
        lp, lq = (x @ model.weight.T + model.bias).log_softmax(1), (x_adv @ model.weight.T + model.bias).log_softmax(1)
        expected = -lp.gather(1, y[:, None]).mean() + 2.0 * (lp.exp() * (lp - lq)).sum(1).mean()
    torch.testing.assert_close(loss.detach(), expected, **TOL)


def test_trades_attacks_in_eval_mode_and_restores_each_submodules_mode():
    model = nn.Sequential(linear(), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a submodule frozen in eval mode by the user must stay so
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append([m.training for m in module.modules()]))
    method, ctx = context(model, "trades")
    method.perturb(ctx, batch()[0])
    assert seen and not any(any(s) for s in seen)
    assert [m.training for m in model.modules()] == [True, True, False]


def test_mart_loss_formula_on_three_classes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    adv = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    total = 0.0
    for i in range(5):
        p, q = torch.softmax(logits[i], 0).tolist(), torch.softmax(adv[i], 0).tolist()
        wrong = max((c for c in range(3) if c != y[i]), key=lambda c: q[c])
        bce = -math.log(q[y[i]]) - math.log(1.0001 - q[wrong] + 1e-12)
        kl = sum(p[c] * (math.log(p[c]) - math.log(q[c] + 1e-12)) for c in range(3))
        total += bce + 4.0 * kl * (1.0000001 - p[y[i]])
    torch.testing.assert_close(mart_loss(logits, adv, y, 4.0), torch.tensor(total / 5, dtype=torch.float64), **TOL)


def test_mart_uses_the_pgd_corner():
    model = linear()
    x, y = batch()
    method, ctx = context(model, "mart", mart_beta=3.0)
    loss, stats = method.loss(ctx, x, y)
    with torch.no_grad():
        expected = mart_loss(x @ model.weight.T + model.bias, worst_corner(model, x, y) @ model.weight.T + model.bias,
                             y, 3.0)
    torch.testing.assert_close(loss.detach(), expected, **TOL)
    assert {"clean_correct", "adv_correct"} <= set(stats)


def test_fast_at_fgsm_from_replayed_random_start():
    model = linear()
    x, y = batch()
    method, ctx = context(model, "fast-at")
    replay = torch.Generator().manual_seed(3)
    start = (x + (2 * torch.rand(x.shape, generator=replay, dtype=x.dtype) - 1) * EPS).clamp(0, 1)
    s = (model.weight[y] - model.weight[1 - y]).detach()
    expected_adv = torch.min(torch.max(start - 1.25 * EPS * s.sign(), x - EPS), x + EPS).clamp(0, 1)
    loss, _ = method.loss(ctx, x, y)
    with torch.no_grad():
        torch.testing.assert_close(loss, ce(expected_adv @ model.weight.T + model.bias, y), **TOL)


def softmax_ce_grads(w, b, x, y):
    """Loss gradients of a linear softmax classifier: (dW, db, dx, dlogits)."""
    g = (torch.softmax(x @ w.T + b, 1) - F.one_hot(y, w.shape[0])) / len(y)
    return g.T @ x, g.sum(0), g @ w, g


def test_free_at_replays_and_persistent_noise():
    model = linear()
    (x1, y1), (x2, y2) = batch(seed=1), batch(n=4, seed=2)
    method, ctx = context(model, "free-at", lr=0.2, free_replays=3)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    noise = torch.zeros_like(x1)
    for x, y in ((x1, y1), (x2, y2)):  # the second, smaller batch starts from the first batch's noise
        stats = method.train_step(ctx, x, y)
        n = len(y)
        for _ in range(3):
            dw, db, dx, _ = softmax_ce_grads(w, b, x + noise[:n], y)
            w, b = w - 0.2 * dw, b - 0.2 * db
            noise[:n] = (noise[:n] + EPS * dx.sign()).clamp(-EPS, EPS)
        assert stats["n"] == 3 * n
    torch.testing.assert_close(model.weight.detach(), w, **TOL)
    torch.testing.assert_close(model.bias.detach(), b, **TOL)
    torch.testing.assert_close(method.noise, noise, **TOL)
    fresh = get_method("free-at", ctx.config)
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.noise, noise, **TOL)


class TwoLinear(nn.Module):
    """f0 = W1 x + b1 (the protocol's first layer), logits = W2 f0 + b2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.first_layer, self.head = nn.Linear(2, 3).double(), nn.Linear(3, 2).double()

    def forward(self, x):
        return self.head(self.first_layer(x))


def test_yopo_against_hand_hamiltonian_updates():
    model = TwoLinear()
    x, y = batch()
    m, n, lr = 2, 2, 0.1
    method, ctx = context(model, "yopo", lr=lr, yopo_m=m, yopo_n=n)
    assert set(ctx.optimizers) == {"main", "layer_one"}
    w1, b1 = model.first_layer.weight.detach().clone(), model.first_layer.bias.detach().clone()
    w2, b2 = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    replay = torch.Generator().manual_seed(3)
    eta = (x + (2 * torch.rand(x.shape, generator=replay, dtype=x.dtype) - 1) * EPS).clamp(0, 1) - x
    gw1, gb1, gw2, gb2 = (torch.zeros_like(t) for t in (w1, b1, w2, b2))
    for _ in range(m):
        f0 = (x + eta) @ w1.T + b1
        dw2, db2, costate, _ = softmax_ce_grads(w2, b2, f0, y)  # costate = dL/df0 = -p
        gw2, gb2 = gw2 + dw2 / m, gb2 + db2 / m
        for _ in range(n):
            eta = torch.min(torch.max(x + eta + EPS * (costate @ w1).sign(), x - EPS), x + EPS).clamp(0, 1) - x
        gw1, gb1 = gw1 + costate.T @ (x + eta) / m, gb1 + costate.sum(0) / m
    stats = method.train_step(ctx, x, y)
    assert stats["n"] == m * len(y)
    for got, start, grad in ((model.first_layer.weight, w1, gw1), (model.first_layer.bias, b1, gb1),
                             (model.head.weight, w2, gw2), (model.head.bias, b2, gb2)):
        torch.testing.assert_close(got.detach(), start - lr * grad, **TOL)


def test_yopo_needs_the_first_layer_protocol():
    with pytest.raises(TypeError, match="YOPO needs the first-layer protocol.*first_layer"):
        get_method("yopo", TrainConfig(method="yopo")).param_groups(nn.Linear(2, 2))


def test_yopo_rejects_a_first_layer_used_twice():
    class Twice(TwoLinear):
        def forward(self, x):
            return self.head(self.first_layer(x)) + self.head(self.first_layer(x))

    model = Twice()
    method, ctx = context(model, "yopo")
    with pytest.raises(RuntimeError, match="ran 2 times"):
        method.train_step(ctx, *batch())


def test_jacobian_estimate_replays_the_projections():
    model = linear(2, 3)
    x, _ = batch()
    got = jacobian_frobenius_sq(model, x, 4, torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)
    total = 0.0
    for _ in range(4):
        v = torch.randn((6, 3), generator=replay, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True)
        total += ((v @ model.weight.detach()) ** 2).sum()  # v^T J with J = W for every example
    torch.testing.assert_close(got.detach(), 3 * total / (4 * 6), **TOL)


def test_jacobian_estimate_is_unbiased_and_exact_for_one_output():
    model = linear(2, 3)
    x, _ = batch()
    many = jacobian_frobenius_sq(model, x, 4000, torch.Generator().manual_seed(0))
    assert abs(many.item() / (model.weight ** 2).sum().item() - 1) < 0.05
    single = linear(2, 1)
    torch.testing.assert_close(jacobian_frobenius_sq(single, x, 1, torch.Generator()).detach(),
                               (single.weight.detach() ** 2).sum(), **TOL)


def test_jacobian_regulariser_adds_to_any_method():
    model = linear()
    x, y = batch()
    method, ctx = context(model, jacobian_weight=0.5, jacobian_projections=2)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    replay = torch.Generator().manual_seed(3)
    vs = [torch.randn((6, 2), generator=replay, dtype=torch.float64) for _ in range(2)]
    method.train_step(ctx, x, y)
    w = w0.clone().requires_grad_(True)
    reg = sum(((v / v.norm(dim=1, keepdim=True)) @ w).pow(2).sum() for v in vs) * 2 / (2 * 6)
    (gw,) = torch.autograd.grad(ce(x @ w.T + b0, y) + 0.5 * reg, w)
    torch.testing.assert_close(model.weight.detach(), w0 - 0.05 * gw, **TOL)


def test_non_finite_loss_names_epoch_and_batch():
    model = linear()
    method, ctx = context(model)
    ctx.epoch, ctx.batch_idx = 7, 3
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    before = model.bias.detach().clone()
    with pytest.raises(NonFiniteLossError, match="epoch 7, batch 3"):
        method.train_step(ctx, *batch())
    torch.testing.assert_close(model.bias.detach(), before)  # nothing was stepped
