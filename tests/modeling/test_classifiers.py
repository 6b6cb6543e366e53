"""Tests for lt_detectron.modeling.classifiers."""

import math

import pytest
import torch
import torch.nn as nn

from lt_detectron.modeling.classifiers import CosineClassifier, init_prior_bias


def _manual_cos(x, w):
    out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            out[i, j] = (x[i] @ w[j]) / (x[i].norm() * w[j].norm())
    return out


def test_raw_cosines_when_scale_none():
    torch.manual_seed(0)
    clf = CosineClassifier(8, 5, scale=None, bias=False)
    assert clf.scale is None and clf.bias is None and clf.weight.shape == (5, 8)
    x = torch.randn(6, 8)
    out = clf(x)
    torch.testing.assert_close(out, _manual_cos(x, clf.weight.detach()))
    assert out.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(clf.weight_norms(), clf.weight.detach().norm(dim=1))
    assert clf.weight_norms().requires_grad
    # 4-D input (R, C, H, W) is flattened
    x4 = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(clf(x4), clf(x4.flatten(1)))


def test_fixed_and_learnable_scale_and_bias():
    torch.manual_seed(1)
    x = torch.randn(4, 8)
    fixed = CosineClassifier(8, 3, scale=20.0, bias=True)
    with torch.no_grad():
        fixed.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    want = 20.0 * _manual_cos(x, fixed.weight.detach()) + torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(fixed(x), want)
    assert "scale" in fixed.state_dict() and not isinstance(fixed.scale, nn.Parameter)
    learn = CosineClassifier(8, 3, scale=10.0, learn_scale=True)
    assert isinstance(learn.scale, nn.Parameter)
    learn(x).sum().backward()
    assert learn.scale.grad is not None and learn.scale.grad.abs() > 0
    with pytest.raises(ValueError):
        CosineClassifier(8, 3, scale=None, learn_scale=True)


def test_zero_feature_is_finite():
    clf = CosineClassifier(4, 3, scale=30.0)
    x = torch.zeros(2, 4, requires_grad=True)
    out = clf(x)
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_init_prior_bias():
    lin = nn.Linear(4, 3)
    assert init_prior_bias(lin, 0.01) is lin
    torch.testing.assert_close(lin.bias.detach(), torch.full((3,), -math.log(99.0)))
    torch.testing.assert_close(torch.sigmoid(lin.bias.detach()), torch.full((3,), 0.01))
    clf = CosineClassifier(4, 3, scale=20.0, bias=True)
    init_prior_bias(clf, 0.001)
    assert clf.bias.detach()[0].item() == pytest.approx(-math.log(999.0))
    with pytest.raises(ValueError):
        init_prior_bias(nn.Linear(4, 3, bias=False), 0.01)
    with pytest.raises(ValueError):
        init_prior_bias(lin, 1.0)
