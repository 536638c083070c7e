"""train.loss: cross-entropy and openpoints' Poly-1 focal loss against NumPy and a hand-computed value."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointdr2.config import load_config
from pointdr2.engine.losses import build_loss, poly1_focal_loss


def np_poly1_focal(logits, target, epsilon, alpha, gamma):
    """Per (point, class) in float64, from the definition: sigmoid per class against the one-hot target."""
    k = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, k)
    y = np.eye(k)[target.reshape(-1)]
    p = 1.0 / (1.0 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = np.where(y == 1, p, 1 - p)
    a_t = np.where(y == 1, alpha, 1 - alpha)
    return float(np.mean(a_t * bce * (1 - p_t) ** gamma + epsilon * (1 - p_t) ** (gamma + 1)))


def test_poly1_focal_hand_computed():
    # logits 0: p = p_t = 1/2, BCE = ln 2; alpha_t 0.25 and 0.75 average to 1/2:
    # mean = (1/2) ln2 (1/2)^2 + (1/2)^3 = ln2 / 8 + 1 / 8
    loss = poly1_focal_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(2) / 8 + 1 / 8, rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 7), (3, 50, 64)])
def test_poly1_focal_matches_numpy_per_point_and_per_shape(shape):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    for eps, alpha, gamma in [(1.0, 0.25, 2.0), (0.5, 0.6, 1.0), (0.0, -1.0, 0.0)]:
        got = poly1_focal_loss(logits, target, epsilon=eps, alpha=alpha, gamma=gamma).item()
        if alpha < 0:  # openpoints: a negative alpha turns the class weighting off
            z = logits.movedim(1, -1).reshape(-1, shape[1])
            y = F.one_hot(target.reshape(-1), shape[1]).double()
            expected = F.binary_cross_entropy_with_logits(z, y).item()  # gamma 0, epsilon 0: plain BCE
        else:
            expected = np_poly1_focal(logits.numpy(), target.numpy(), eps, alpha, gamma)
        assert got == pytest.approx(expected, rel=1e-10)


def test_build_loss_from_the_config():
    logits = torch.randn(4, 5, 6)
    target = torch.randint(0, 5, (4, 6))
    ce = build_loss(load_config(None, ["train.label_smoothing=0.1"]).train)
    torch.testing.assert_close(ce(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1))
    focal = build_loss(load_config(None, ["train.loss=poly1_focal", "train.focal_gamma=1"]).train)
    torch.testing.assert_close(focal(logits, target), poly1_focal_loss(logits, target, gamma=1.0))
    with pytest.raises(ValueError, match="train.label_smoothing applies to train.loss=cross_entropy only"):
        build_loss(load_config(None, ["train.loss=poly1_focal", "train.label_smoothing=0.2"]).train)
    with pytest.raises(ValueError, match="train.loss: expected one of cross_entropy, poly1_focal"):
        load_config(None, ["train.loss=focal"])
    with pytest.raises(ValueError, match=r"train.focal_alpha: expected a number in \[0, 1\]"):
        load_config(None, ["train.focal_alpha=2"])
