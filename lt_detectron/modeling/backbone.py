"""A deliberately tiny CNN + FPN backbone for CPU runs (the embedded dataset's demo).

Up to four stages of two 3x3 convolutions (BatchNorm, ReLU), strides 4/8/16/32, named
``t2``..``t5`` (only the stages up to the last of ``MODEL.TINY.OUT_FEATURES`` are built);
Detectron2's FPN on top. Registered as ``build_tiny_fpn_backbone``.
"""

import math

import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = ["TinyNet", "build_tiny_backbone", "build_tiny_fpn_backbone"]


class TinyNet(Backbone):
    def __init__(
        self, widths=(16, 32, 64, 96), out_features=("t3", "t4", "t5"), norm="BN", in_channels=3
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError("MODEL.TINY.WIDTHS needs 4 stage widths, got %r" % (widths,))
        self.stem = Conv2d(
            in_channels,
            widths[0],
            3,
            stride=2,
            padding=1,
            bias=False,
            norm=get_norm(norm, widths[0]),
        )
        names = ["t2", "t3", "t4", "t5"]
        unknown = set(out_features) - set(names)
        if unknown:
            raise ValueError(
                "MODEL.TINY.OUT_FEATURES has unknown names %s; choose from %s"
                % (sorted(unknown), names)
            )
        # stages above the last requested output are not built (DDP rejects unused parameters)
        self.stage_names = names[: max(names.index(f) for f in out_features) + 1]
        c_in = widths[0]
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for i, (name, w) in enumerate(zip(self.stage_names, widths)):
            stage = nn.Sequential(
                Conv2d(c_in, w, 3, stride=2, padding=1, bias=False, norm=get_norm(norm, w)),
                nn.ReLU(inplace=True),
                Conv2d(w, w, 3, stride=1, padding=1, bias=False, norm=get_norm(norm, w)),
                nn.ReLU(inplace=True),
            )
            self.add_module(name, stage)
            self._out_feature_strides[name] = 4 * 2**i
            self._out_feature_channels[name] = w
            c_in = w
        self._out_features = list(out_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
        return out

    def output_shape(self):
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_tiny_backbone(cfg, input_shape):
    return TinyNet(
        cfg.MODEL.TINY.WIDTHS,
        cfg.MODEL.TINY.OUT_FEATURES,
        cfg.MODEL.RESNETS.NORM,
        input_shape.channels,
    )


@BACKBONE_REGISTRY.register()
def build_tiny_fpn_backbone(cfg, input_shape):
    """Tiny CNN + FPN; a max-pooled extra level is added above the last FPN level."""
    bottom_up = build_tiny_backbone(cfg, input_shape)
    top_block = LastLevelMaxPool()
    last_stride = bottom_up.output_shape()[cfg.MODEL.FPN.IN_FEATURES[-1]].stride
    top_block.in_feature = "p%d" % int(math.log2(last_stride))
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
