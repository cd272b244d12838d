"""Shared fixtures of the adv-train tests."""
import pytest
import torch
from torch import nn


def blobs(seed: int, n: int, d: int = 16, k: int = 4):
    """Gaussian blobs: ``k`` classes in [0, 1]^d, the class centres fixed, the draws from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    centers = 0.25 + 0.5 * torch.rand(k, d, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, k, (n,), generator=g)
    return (centers[y] + 0.12 * torch.randn(n, d, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """(model, x_test, y_test): a small MLP trained here (150 full-batch Adam steps on 400 blob points, over
    90 % on the 100 test points), for the attack-strength tests. One per test module, so none shares it."""
    torch.manual_seed(0)
    x, y = blobs(1, 400)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    x_test, y_test = blobs(2, 100)
    with torch.no_grad():
        learned = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert learned > 0.9, "the test model should have learned the task"
    return model.eval(), x_test, y_test
