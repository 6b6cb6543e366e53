"""Class-selected mask prediction at inference.

Detectron2's mask head (``MaskRCNNConvUpsampleHead``) ends with a 1x1 ``predictor`` conv that
outputs one 28x28 mask per class for every detection; ``mask_rcnn_inference`` then keeps the
channel of the detection's predicted class. With LVIS's 1,203 classes and 300 detections that is a
``(300, 1203, 28, 28)`` tensor (1.1 GiB) of which 1/1203 is used. Here, at inference, only the
rows of the predictor for the predicted classes are applied, which gives the same logits (up to
float summation order) for a fraction of the time and memory. Training is unchanged.

The predictor protocol (``class_selected_logits``), in order:

1. a predictor with a method ``forward_classes(x: Tensor[N, Cin, H, W], classes: LongTensor[N])
   -> Tensor[N, 1, H, W]`` computes the channels itself (e.g. a cosine-normalised predictor);
2. a class-agnostic predictor (``out_channels == 1``) is applied as is (nothing to select);
3. a plain 1x1 conv (``torch.nn.Conv2d`` or ``detectron2.layers.Conv2d`` with no norm or
   activation, stride 1, no padding, one group, no hooks) is applied as a batched product with its
   weight rows (and biases) of the given classes;
4. anything else is applied in full and the classes' channels are picked (correct, slower).

Use, from a user's own code:

* ``ClassSelectedMaskMixin`` before a ``StandardROIHeads`` subclass (``LongTailROIHeads`` and
  ``LongTailCascadeROIHeads`` use it): ``class MyHeads(ClassSelectedMaskMixin, StandardROIHeads)``;
* or ``class_selected_mask_inference(mask_head, x, instances)`` in place of
  ``mask_head(x, instances)`` at inference, for any mask head (heads other than Detectron2's
  conv-upsample layout run their own ``forward``).
"""

from typing import Dict, List

import torch
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead, MaskRCNNConvUpsampleHead
from detectron2.structures import Instances
from torch import nn

__all__ = [
    "ClassSelectedMaskMixin",
    "class_selected_logits",
    "class_selected_mask_inference",
    "class_selected_mask_logits",
]

_PLAIN_CONV_FORWARDS = (nn.Conv2d.forward, D2Conv2d.forward)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _is_plain_1x1_conv(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or type(m).forward not in _PLAIN_CONV_FORWARDS:
        return False
    if getattr(m, "norm", None) is not None or getattr(m, "activation", None) is not None:
        return False
    return (
        m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
        and not _has_hooks(m)
    )


def class_selected_logits(predictor: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    """Channel ``classes[i]`` of ``predictor(x)[i]`` for each row i, without the other channels.

    Args:
        predictor: the mask predictor, mapping ``(N, Cin, H, W)`` to ``(N, C, H, W)`` logits.
        x: its input, ``(N, Cin, H, W)``.
        classes: ``(N,)`` integer class indices in ``[0, C)`` (ignored if C is 1).

    Returns:
        ``(N, 1, H, W)`` logits, equal to ``predictor(x)[arange(N), classes][:, None]`` up to
        float summation order.
    """
    classes = classes.to(device=x.device, dtype=torch.long)
    if hasattr(predictor, "forward_classes"):
        return predictor.forward_classes(x, classes)
    if getattr(predictor, "out_channels", None) == 1:
        return predictor(x)
    if _is_plain_1x1_conv(predictor):
        n, cin, h, w = x.shape
        weight = predictor.weight[classes, :, 0, 0]  # (N, Cin)
        out = torch.bmm(weight[:, None, :], x.reshape(n, cin, h * w))  # (N, 1, H*W)
        if predictor.bias is not None:
            out = out + predictor.bias[classes].to(out.dtype)[:, None, None]
        return out.reshape(n, 1, h, w)
    return _pick(predictor(x), classes)


def _pick(full: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Channel ``classes[i]`` of row i of ``(N, C, H, W)`` logits (the one channel if C is 1)."""
    if full.shape[1] == 1:
        return full
    return full[torch.arange(full.shape[0], device=full.device), classes][:, None]


def _selectable(mask_head: nn.Module) -> bool:
    """Detectron2's conv-upsample layout: the forward and layers of ``MaskRCNNConvUpsampleHead``
    (a sequence of modules ending with ``predictor``), no hooks on the head."""
    return (
        isinstance(mask_head, MaskRCNNConvUpsampleHead)
        and type(mask_head).forward is BaseMaskRCNNHead.forward
        and type(mask_head).layers is MaskRCNNConvUpsampleHead.layers
        and len(mask_head) > 0
        and mask_head[-1] is getattr(mask_head, "predictor", None)
        and not _has_hooks(mask_head)
    )


def class_selected_mask_logits(mask_head: nn.Module, x: torch.Tensor, classes: torch.Tensor):
    """The mask logits of ``classes`` for the ROI features ``x``: ``(N, 1, H, W)``.

    ``mask_head`` has Detectron2's conv-upsample layout (``MaskRCNNConvUpsampleHead``: its layers in
    order, the last one ``predictor``); any other head is run in full (``mask_head.layers``) and
    the classes' channels picked.
    """
    if not _selectable(mask_head):
        return _pick(mask_head.layers(x), classes.to(device=x.device, dtype=torch.long))
    for layer in list(mask_head)[:-1]:
        x = layer(x)
    return class_selected_logits(mask_head.predictor, x, classes)


def class_selected_mask_inference(
    mask_head: nn.Module, x, instances: List[Instances]
) -> List[Instances]:
    """``mask_head(x, instances)`` at inference, computing only the predicted classes' masks.

    Sets ``pred_masks`` ``(n, 1, H, W)`` (probabilities) on every ``Instances`` from its
    ``pred_classes``, as Detectron2's ``mask_rcnn_inference`` does, and returns ``instances``.
    A head without Detectron2's conv-upsample layout runs its own ``forward``.
    """
    if not _selectable(mask_head) or not isinstance(x, torch.Tensor):
        return mask_head(x, instances)
    if len(instances) == 0:
        return instances
    classes = cat([i.pred_classes for i in instances])
    probs = class_selected_mask_logits(mask_head, x, classes).sigmoid()
    for prob, inst in zip(probs.split([len(i) for i in instances]), instances):
        inst.pred_masks = prob
    return instances


class ClassSelectedMaskMixin:
    """For ``StandardROIHeads`` subclasses (cascade included): at inference the mask branch
    computes only the predicted classes' masks (``class_selected_mask_inference``); training and
    heads without a mask pooler take Detectron2's ``_forward_mask``.

    ``class MyROIHeads(ClassSelectedMaskMixin, StandardROIHeads): ...``
    """

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        if self.training or not self.mask_on or self.mask_pooler is None:
            return super()._forward_mask(features, instances)
        features = [features[f] for f in self.mask_in_features]
        x = self.mask_pooler(features, [i.pred_boxes for i in instances])
        return class_selected_mask_inference(self.mask_head, x, instances)
