"""Randomized smoothing against the closed form of a linear classifier, its abstentions, its statistics against
scipy, and its reproducibility."""
import math

import pytest
import torch
from advssm.adv_train.certify import (
    ABSTAIN,
    Smooth,
    beta_ppf,
    betainc,
    binomial_test_half,
    clopper_pearson_lower,
    normal_ppf,
)
from scipy import special, stats
from torch import nn

SIGMA, ALPHA, N = 0.5, 0.001, 100_000


class LinearBinary(nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as the logits (0, w.x + b)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


@pytest.fixture
def linear():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, generator=gen, dtype=torch.float64)
    b = 0.1
    # points at signed distances from the hyperplane w.x + b = 0 (the exact certified radius of g = f is |dist|)
    base = torch.rand(8, generator=gen, dtype=torch.float64)
    base = base - (base @ w + b) / w.dot(w) * w  # on the hyperplane
    distances = torch.tensor([0.3, -0.6, 1.2, 0.0], dtype=torch.float64)
    x = base + distances[:, None] * w / w.norm()
    return LinearBinary(w, b), x, distances


def test_certified_radius_matches_the_linear_closed_form(linear):
    model, x, distances = linear
    cert = Smooth(model, sigma=SIGMA, seed=1, batch_size=20_000).certify(x[:3], n0=100, n=N, alpha=ALPHA)
    for i, dist in enumerate(distances[:3].tolist()):
        assert cert.prediction[i] == (1 if dist > 0 else 0)
        p_a = stats.norm.cdf(abs(dist) / SIGMA)  # g = f for a linear f, and P(top class) = Phi(|dist| / sigma)
        sd = math.sqrt(N * p_a * (1 - p_a))
        # the radius never exceeds the exact one (the bound holds at 1 - alpha; the seed fixes the draw) and falls
        # short of it by no more than the Clopper-Pearson slack of a count 5 standard deviations low
        slack_radius = SIGMA * normal_ppf(clopper_pearson_lower(math.floor(N * p_a - 5 * sd), N, ALPHA))
        assert slack_radius <= cert.radius[i] <= abs(dist), (i, float(cert.radius[i]), slack_radius, dist)
        assert cert.radius[i] == pytest.approx(SIGMA * stats.norm.ppf(float(cert.p_lower[i])), rel=1e-12)


def test_a_unanimous_vote_certifies_sigma_times_the_quantile_of_alpha_to_the_one_over_n(linear):
    model, x, _ = linear
    far = x[2:3] * 0 + x[2:3] + 50 * model.w / model.w.norm()  # every noisy copy on the positive side
    cert = Smooth(model, sigma=SIGMA, seed=0).certify(far, n0=10, n=1000, alpha=ALPHA)
    # all n votes: Clopper-Pearson's lower bound is alpha^(1/n) in closed form
    assert cert.prediction.tolist() == [1]
    assert float(cert.p_lower[0]) == pytest.approx(ALPHA ** (1 / 1000), abs=1e-12)
    assert float(cert.radius[0]) == pytest.approx(SIGMA * stats.norm.ppf(ALPHA ** (1 / 1000)), rel=1e-10)


def test_on_the_decision_boundary_it_abstains(linear):
    model, x, _ = linear
    on_boundary = x[3:4]  # P(class 1) = 1/2 exactly
    smooth = Smooth(model, sigma=SIGMA, seed=2, batch_size=5000)
    assert smooth.predict(on_boundary, n=10_000, alpha=ALPHA).tolist() == [ABSTAIN]
    cert = smooth.certify(on_boundary, n0=100, n=10_000, alpha=ALPHA)
    assert cert.prediction.tolist() == [ABSTAIN] and cert.radius.tolist() == [0.0]
    assert float(cert.p_lower[0]) < 0.5


def test_predict_returns_the_sign_away_from_the_boundary(linear):
    model, x, distances = linear
    pred = Smooth(model, sigma=SIGMA, seed=3).predict(x[:3], n=2000, alpha=ALPHA)
    assert pred.tolist() == [1, 0, 1]
    # few samples cannot separate a small margin: at 20 samples and P = Phi(0.6) = 0.73 the test keeps quiet
    assert Smooth(model, sigma=SIGMA, seed=3).predict(x[:1], n=20, alpha=ALPHA).tolist() == [ABSTAIN]


def test_same_seed_same_certificates_and_another_seed_other_counts(linear):
    model, x, _ = linear
    runs = [Smooth(model, sigma=SIGMA, seed=seed, batch_size=300).certify(x, n0=50, n=2000, alpha=ALPHA)
            for seed in (7, 7, 8)]
    for field in ("prediction", "radius", "p_lower"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field))
    assert not torch.equal(runs[0].p_lower, runs[2].p_lower)


def test_cost_is_n0_plus_n_passes_per_example_and_the_models_mode_is_kept(linear):
    model, x, _ = linear
    model.train()
    smooth = Smooth(model, sigma=SIGMA, seed=0, batch_size=64)
    smooth.certify(x[:2], n0=10, n=100, alpha=ALPHA)
    assert smooth.forward_passes == 2 * 110 and model.training


@pytest.mark.parametrize("kwargs, message", [({"sigma": 0.0}, "sigma must be > 0"), ({"sigma": -1}, "sigma"),
                                             ({"sigma": 0.5, "batch_size": 0}, "batch_size")])
def test_bad_settings_are_named(linear, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Smooth(linear[0], **kwargs)


def test_alpha_must_be_a_probability(linear):
    with pytest.raises(ValueError, match="alpha must be a probability"):
        Smooth(linear[0], sigma=0.5).certify(linear[1], n0=1, n=1, alpha=1.5)


def test_statistics_agree_with_scipy():
    for a, b in [(0.5, 0.5), (1, 1), (2, 3), (30, 7), (990, 11), (99_000, 1001), (5, 95_000)]:
        for x in (1e-6, 0.01, 0.3, 0.5, 0.77, 0.999):
            assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10, abs=1e-14)
    for k, n in [(1, 1), (0, 10), (3, 10), (10, 10), (500, 1000), (700, 1000), (99_000, 100_000), (100_000, 100_000)]:
        for alpha in (0.001, 0.05):
            ref = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
            assert clopper_pearson_lower(k, n, alpha) == pytest.approx(ref, abs=1e-12)
        assert binomial_test_half(k, n) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-300)
    assert beta_ppf(0.3, 4.0, 9.0) == pytest.approx(stats.beta.ppf(0.3, 4.0, 9.0), abs=1e-13)
    assert normal_ppf(0.999) == pytest.approx(stats.norm.ppf(0.999), rel=1e-12)
