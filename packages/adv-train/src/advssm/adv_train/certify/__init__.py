"""Certified robustness in adv-train: randomized smoothing (``Smooth``) and its statistics.

    from advssm.adv_train.certify import Smooth
    cert = Smooth(model, sigma=0.25, seed=0).certify(x, n0=100, n=10_000, alpha=0.001)
    cert.prediction, cert.radius      # class or -1, certified L2 radius

Interval bound propagation for the SSM backbone lives in ``advssm.ads.ibp`` (it needs the model's structure).
"""
from .smoothing import ABSTAIN, Certificate, Smooth
from .stats import beta_ppf, betainc, binomial_test_half, clopper_pearson_lower, normal_ppf

__all__ = ["Smooth", "Certificate", "ABSTAIN", "betainc", "beta_ppf", "clopper_pearson_lower",
           "binomial_test_half", "normal_ppf"]
