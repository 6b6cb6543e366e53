"""The FCOS head (:class:`FCOSHead`, with a learnable :class:`Scale` per level), as the FCOS reference
implementation has it; see ``fcos.py``'s docstring for how it differs from detectron2's."""

import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec

__all__ = ["FCOSHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar (one per FPN level)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x):
        return x * self.scale


def _norm(norm: str, channels: int):
    if not norm:
        return None
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    raise ValueError("MODEL.FCOS.HEAD_NORM must be GN, BN or empty, got %r" % (norm,))


class FCOSHead(nn.Module):
    """FCOS head shared over levels. ``forward(features) -> [logits, box_reg, centerness]``, each a list of
    per-level tensors (N, C, H, W), (N, 4, H, W) (ltrb distances in input pixels, >= 0), (N, 1, H, W)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        norm_reg_targets: bool = True,
        centerness_on_reg: bool = True,
    ):
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                "FCOS needs the same number of channels on every level, got %s" % channels
            )
        c = channels.pop()
        self.strides = [int(s.stride) for s in input_shape]
        self.num_classes = num_classes
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg
        for name in ("cls_tower", "bbox_tower"):
            layers = []
            for _ in range(num_convs):
                n = _norm(norm, c)
                layers += [Conv2d(c, c, 3, padding=1, bias=n is None, norm=n), nn.ReLU()]
            self.add_module(name, nn.Sequential(*layers))
        self.cls_logits = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.prior_prob = prior_prob
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    @classmethod
    def from_config(cls, cfg, input_shape):
        f = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape,
            "num_classes": f.NUM_CLASSES,
            "num_convs": f.NUM_CONVS,
            "norm": f.HEAD_NORM,
            "prior_prob": f.PRIOR_PROB,
            "norm_reg_targets": f.NORM_REG_TARGETS,
            "centerness_on_reg": f.CENTERNESS_ON_REG,
        }

    def forward(self, features: List[torch.Tensor]):
        logits, regs, ctrs = [], [], []
        for x, scale, stride in zip(features, self.scales, self.strides):
            cls_t = self.cls_tower(x)
            box_t = self.bbox_tower(x)
            logits.append(self.cls_logits(cls_t))
            ctrs.append(self.centerness(box_t if self.centerness_on_reg else cls_t))
            reg = scale(self.bbox_pred(box_t))
            regs.append(
                F.relu(reg) * stride if self.norm_reg_targets else torch.exp(reg.clamp(max=20.0))
            )
        return [logits, regs, ctrs]
