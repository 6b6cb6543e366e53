"""Whole-model gradient clipping (SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model")."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_optimizer

from lt_detectron.engine.solver import build_lt_optimizer, with_full_model_gradient_clipping

# gradients of a tiny model, chosen by hand: Linear(2, 2) weight/bias and BatchNorm1d weight/bias
GRADS = {
    "fc.weight": [[3.0, 0.0], [0.0, 4.0]],  # norm 5
    "fc.bias": [12.0, 0.0],  # norm 12
    "bn.weight": [0.0, 0.0],  # norm 0
    "bn.bias": [0.0, 84.0],  # norm 84
}
TOTAL_NORM = math.sqrt(5.0**2 + 12.0**2 + 84.0**2)  # = 85


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def _cfg(clip_type, clip_value, enabled=True):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def _step(cfg, builder=build_lt_optimizer):
    """One SGD step (lr 1, no momentum, no decay): returns the applied update per parameter."""
    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = builder(cfg, model)
    for n, p in model.named_parameters():
        p.grad = torch.tensor(GRADS[n])
    opt.step()
    return opt, {n: (before[n] - p.detach()) for n, p in model.named_parameters()}


def test_full_model_total_norm_equals_clip_value():
    assert TOTAL_NORM == pytest.approx(85.0)
    opt, update = _step(_cfg("full_model", 17.0))
    # one common factor 17 / 85 for every parameter, across the optimizer's param groups
    assert len(opt.param_groups) > 1
    for name, g in GRADS.items():
        torch.testing.assert_close(
            update[name], torch.tensor(g) * (17.0 / 85.0), rtol=1e-6, atol=1e-6
        )
    total = math.sqrt(sum(float((u**2).sum()) for u in update.values()))
    assert total == pytest.approx(17.0, rel=1e-6)


def test_full_model_below_threshold_is_untouched():
    _, update = _step(_cfg("full_model", 100.0))
    for name, g in GRADS.items():
        torch.testing.assert_close(update[name], torch.tensor(g))


def test_per_parameter_norm_clipping_differs():
    # detectron2's "norm": each tensor alone to norm <= 17: fc.weight (5) and fc.bias (12) are
    # kept, bn.bias (84) is scaled to 17; the total norm is sqrt(25 + 144 + 289) = 21.4, not 17
    _, per_param = _step(_cfg("norm", 17.0))
    torch.testing.assert_close(per_param["fc.weight"], torch.tensor(GRADS["fc.weight"]))
    torch.testing.assert_close(per_param["fc.bias"], torch.tensor(GRADS["fc.bias"]))
    torch.testing.assert_close(per_param["bn.bias"], torch.tensor([0.0, 17.0]))
    total = math.sqrt(sum(float((u**2).sum()) for u in per_param.values()))
    assert total == pytest.approx(math.sqrt(25 + 144 + 289), rel=1e-6)
    _, full = _step(_cfg("full_model", 17.0))
    assert not torch.allclose(full["fc.bias"], per_param["fc.bias"])


def test_other_clip_types_are_detectron2s():
    for clip_type in ("norm", "value"):
        cfg = _cfg(clip_type, 1.0)
        _, ours = _step(cfg)
        _, theirs = _step(cfg, builder=build_optimizer)
        for name in GRADS:
            torch.testing.assert_close(ours[name], theirs[name])
    _, off = _step(_cfg("full_model", 1.0, enabled=False))
    for name, g in GRADS.items():
        torch.testing.assert_close(off[name], torch.tensor(g))
    assert type(build_lt_optimizer(_cfg("norm", 1.0, enabled=False), Tiny())) is torch.optim.SGD


def test_detectron2_v06_rejects_full_model():
    # why build_lt_optimizer handles "full_model" before delegating
    with pytest.raises(ValueError, match="full_model"):
        build_optimizer(_cfg("full_model", 1.0), Tiny())


def test_bad_clip_value_names_the_key():
    with pytest.raises(ValueError, match=r"SOLVER\.CLIP_GRADIENTS\.CLIP_VALUE"):
        build_lt_optimizer(_cfg("full_model", 0.0), Tiny())


def test_subclass_keeps_optimizer_state_dict_and_name():
    cls = with_full_model_gradient_clipping(torch.optim.SGD, 1.0)
    assert issubclass(cls, torch.optim.SGD) and cls.__name__ == "SGDWithFullModelGradientClip"
    model = Tiny()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9)
    for n, p in model.named_parameters():
        p.grad = torch.tensor(GRADS[n])
    opt.step()
    # a plain SGD loads the state (checkpoints stay standard)
    plain = torch.optim.SGD(Tiny().parameters(), lr=0.1, momentum=0.9)
    plain.load_state_dict(opt.state_dict())
    with pytest.raises(TypeError):
        with_full_model_gradient_clipping(object, 1.0)
