"""The normalised mask head: Detectron2's ``MaskRCNNConvUpsampleHead`` whose 1x1 mask predictor is a
:class:`~.normed_conv.NormedConv2d` (cosine-normalised, temperature ``MODEL.LT.NORMED_MASK.TEMPERATURE``).

Selected with ``MODEL.ROI_MASK_HEAD.NAME "NormedMaskRCNNConvUpsampleHead"``; everything else (convs,
deconv, loss, inference) is Detectron2's. ECM's and Seesaw's "normed mask" LVIS recipes use it
(docs/methods.md#normalised-mask-head).
"""

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
)

from .normed_conv import NormedConv2d

__all__ = ["NormedMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class NormedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` with ``predictor`` = :class:`NormedConv2d` (same input and output
    channels, with a bias; its parameters keep the names ``predictor.weight`` / ``predictor.bias``)."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes,
        conv_dims,
        conv_norm="",
        temperature: float = 20.0,
        power: float = 1.0,
        **kwargs,
    ):
        """``temperature`` / ``power``: of the :class:`NormedConv2d` predictor; the other arguments
        are ``MaskRCNNConvUpsampleHead``'s."""
        super().__init__(
            input_shape, num_classes=num_classes, conv_dims=conv_dims, conv_norm=conv_norm, **kwargs
        )
        plain = self.predictor
        # assigning the existing attribute keeps the predictor last in the nn.Sequential order
        self.predictor = NormedConv2d(
            plain.in_channels,
            plain.out_channels,
            kernel_size=1,
            bias=plain.bias is not None,
            temperature=temperature,
            power=power,
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["temperature"] = cfg.MODEL.LT.NORMED_MASK.TEMPERATURE
        ret["power"] = cfg.MODEL.LT.NORMED_MASK.POWER
        return ret
