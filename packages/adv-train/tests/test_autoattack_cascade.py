"""AutoAttack runs each attack only on the examples still classified correctly: misclassified
clean examples reach no attack, and each attack sees exactly the examples its predecessors missed."""
import torch
from advssm.adv_train.attacks import Attack, AutoAttack
from torch import nn

EPS = 0.1


class Threshold(nn.Module):
    """Class 1 when feature 0 exceeds 0.5, else class 0 (logits linear in feature 0)."""

    def forward(self, x):
        z = 10 * (x[:, 0] - 0.5)
        return torch.stack([-z, z], dim=1)


class PushIf(Attack):
    """Moves feature 0 up by eps (flipping class 0 to 1) on the examples whose feature 1 is in
    [low, high); records every batch it is given."""

    def __init__(self, model, low, high):
        super().__init__(model, EPS)
        self.low, self.high, self.seen = low, high, []

    def perturb(self, x, y, generator):
        self.seen.append(x.clone())
        chosen = (x[:, 1] >= self.low) & (x[:, 1] < self.high)
        x_adv = x.clone()
        x_adv[chosen, 0] += EPS
        return x_adv


def examples(n=12):
    """Class-0 examples within eps of the boundary; feature 1 (distinct) names each; 0 and 1 misclassified."""
    feature1 = torch.arange(n, dtype=torch.float32) / n
    feature0 = torch.full((n,), 0.45)
    feature0[:2] = 0.55
    return torch.stack([feature0, feature1], dim=1), torch.zeros(n, dtype=torch.long)


def test_each_attack_sees_only_the_examples_still_correct():
    model = Threshold()
    x, y = examples()
    # feature 1 of example i is i / 12: the first breaks 2..5, the second 6..8, the third none
    first, second, third = PushIf(model, 0.0, 0.5), PushIf(model, 0.5, 0.75), PushIf(model, 2.0, 3.0)
    auto = AutoAttack(model, eps=EPS, version="custom", attacks=[first, second, third])

    x_adv = auto(x, y)

    assert len(first.seen) == len(second.seen) == len(third.seen) == 1
    torch.testing.assert_close(first.seen[0], x[2:])  # every clean-correct example, none of 0 and 1
    torch.testing.assert_close(second.seen[0], x[6:])
    torch.testing.assert_close(third.seen[0], x[9:])
    assert auto.last_n_correct == 10
    assert auto.last_broken == {"pushif": 4, "pushif'": 3, "pushif''": 0}
    assert (model(x_adv).argmax(1) != y).tolist() == [True] * 9 + [False] * 3
    torch.testing.assert_close(x_adv[9:], x[9:])  # unbroken examples come back unchanged


def test_attacks_after_the_last_robust_example_are_not_called():
    model = Threshold()
    x, y = examples()
    first, second = PushIf(model, 0.0, 1.0), PushIf(model, 0.0, 1.0)
    auto = AutoAttack(model, eps=EPS, version="custom", attacks=[first, second])
    assert (model(auto(x, y)).argmax(1) != y).all()
    assert len(first.seen) == 1 and second.seen == []
    assert auto.last_broken == {"pushif": 10, "pushif'": 0}
