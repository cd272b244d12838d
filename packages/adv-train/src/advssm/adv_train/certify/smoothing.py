"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing"): the smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) of a base classifier f, its
Monte Carlo prediction with abstention (their PREDICT) and its certified L2 radius (their CERTIFY).

CERTIFY guesses the top class from ``n0`` noisy samples, counts it in ``n`` fresh ones, bounds its probability
from below by the one-sided Clopper-Pearson bound pA_low at level 1 - alpha and certifies, when pA_low > 1/2,
that g predicts that class everywhere in the L2 ball of radius ``sigma * Phi^-1(pA_low)``; otherwise it
abstains (-1). With probability at least 1 - alpha over the noise, a class it returns is g's and the radius holds.

Noise is not clipped: ``x + noise`` leaves [0, 1] (as in Cohen et al.); the base classifier must accept such
inputs (every advssm model does), and the certificate is about g as defined with unclipped noise.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..attacks.base import check_eps, check_positive_int, check_seed, eval_mode
from .stats import binomial_test_half, clopper_pearson_lower, normal_ppf

ABSTAIN = -1


class Certificate(NamedTuple):
    """Per example: ``prediction`` (class, or -1 to abstain), ``radius`` (certified L2 radius, 0 when abstaining)
    and ``p_lower`` (the Clopper-Pearson lower bound pA_low on the top class's probability under noise)."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor


class Smooth:
    """The smoothed classifier of ``model`` under Gaussian noise of standard deviation ``sigma``.

    Args:
        model: base classifier mapping inputs (batch, ...) to logits (batch, classes).
        sigma: noise level (> 0), in the units of the inputs ([0, 1] pixels).
        seed: seeds the noise. The generator is created at the first call on the input's device and advances
            over calls, so a fresh ``Smooth`` with the same seed repeats the same sequence of calls exactly;
            ``None`` seeds it from torch's global RNG.
        batch_size: noisy copies of one example per forward pass.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> smooth = Smooth(model, sigma=0.25, seed=0, batch_size=500)
        >>> cert = smooth.certify(torch.rand(2, 4), n0=100, n=1000, alpha=0.001)
        >>> cert.prediction.shape, cert.radius.shape
        (torch.Size([2]), torch.Size([2]))
    """

    def __init__(self, model: nn.Module, sigma: float, seed: int | None = 0, batch_size: int = 1000):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.sigma = check_eps(sigma, "sigma")
        if self.sigma == 0:
            raise ValueError("sigma must be > 0 (sigma = 0 is the base classifier, which certifies nothing)")
        self.model = model
        self.seed = check_seed(seed)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._generator: torch.Generator | None = None
        self.forward_passes = 0  # noisy samples sent through the model so far (the cost of every number)

    def __repr__(self) -> str:
        return f"Smooth(sigma={self.sigma:g}, seed={self.seed}, batch_size={self.batch_size})"

    # -- Cohen et al.'s PREDICT and CERTIFY -----------------------------------------------------------
    def predict(self, x: Tensor, n: int, alpha: float) -> Tensor:
        """g's class for each example of ``x``, or -1 (abstain) when the top two classes' counts over ``n``
        noisy samples do not differ significantly (two-sided binomial test at level ``alpha``).

        With probability at least 1 - alpha a returned class is g's (Cohen et al., Proposition 1).
        """
        n, alpha = check_positive_int(n, "n"), _check_alpha(alpha)
        out = []
        for example in self._examples(x):
            counts = self._counts(example, n)
            if counts.numel() < 2:
                raise ValueError(f"the model must have at least 2 classes, it has {counts.numel()}")
            top2 = counts.topk(2)
            (n_a, n_b), c_a = top2.values.tolist(), int(top2.indices[0])
            out.append(c_a if binomial_test_half(n_a, n_a + n_b) <= alpha else ABSTAIN)
        return torch.tensor(out, dtype=torch.long, device=x.device)

    def certify(self, x: Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """Per example the class (-1 to abstain) and the certified L2 radius ``sigma * Phi^-1(pA_low)``.

        ``n0`` samples choose the class, ``n`` others bound its probability (their counts are independent of the
        choice, as the guarantee needs); abstains when pA_low <= 1/2. Costs ``n0 + n`` forward passes per example.
        """
        n0, n, alpha = check_positive_int(n0, "n0"), check_positive_int(n, "n"), _check_alpha(alpha)
        predictions, radii, lowers = [], [], []
        for example in self._examples(x):
            guess = int(self._counts(example, n0).argmax())
            n_a = int(self._counts(example, n)[guess])
            p_lower = clopper_pearson_lower(n_a, n, alpha)
            lowers.append(p_lower)
            if p_lower > 0.5:
                predictions.append(guess)
                radii.append(self.sigma * normal_ppf(p_lower))
            else:
                predictions.append(ABSTAIN)
                radii.append(0.0)
        return Certificate(torch.tensor(predictions, dtype=torch.long, device=x.device),
                           torch.tensor(radii, dtype=torch.float64, device=x.device),
                           torch.tensor(lowers, dtype=torch.float64, device=x.device))

    # -- sampling ---------------------------------------------------------------------------------------
    def _examples(self, x: Tensor):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise TypeError("x must be a floating-point tensor of shape (batch, ...)")
        return x.detach().unbind(0)

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)).item())
            self._generator = torch.Generator(device=device).manual_seed(seed)
        elif self._generator.device != device:
            raise ValueError(f"this Smooth drew its noise on {self._generator.device}; inputs are on {device}: "
                             "keep one device per Smooth (make a new one for the other device)")
        return self._generator

    def _counts(self, example: Tensor, num: int) -> Tensor:
        """How often each class wins over ``num`` noisy copies of one example, (classes,) on the CPU."""
        generator = self._noise_generator(example.device)
        counts = None
        with eval_mode(self.model), torch.no_grad():
            remaining = num
            while remaining:
                size = min(self.batch_size, remaining)
                remaining -= size
                batch = example.unsqueeze(0).expand(size, *example.shape)
                noise = torch.randn(batch.shape, generator=generator, device=example.device, dtype=example.dtype)
                logits = self.model(batch + self.sigma * noise)
                if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != size:
                    raise ValueError("the model must return logits of shape (batch, classes)")
                self.forward_passes += size
                found = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).cpu()
                counts = found if counts is None else counts + found
        return counts


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < float(alpha) < 1:
        raise ValueError(f"alpha must be a probability in (0, 1), got {alpha!r}")
    return float(alpha)
