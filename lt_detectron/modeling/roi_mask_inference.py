"""Inference for evaluation that keeps Mask R-CNN masks at ROI level.

``GeneralizedRCNN`` pastes every predicted ``M x M`` mask into a full-image bitmap
(``detector_postprocess``): N x H x W booleans per image, which an evaluator only run-length encodes
again. For evaluation, :class:`ROIMaskInference` runs the same model with
``inference(..., do_postprocess=False)`` and :func:`postprocess_keep_roi_masks`, which rescales,
clips and filters the boxes with Detectron2's own ``detector_postprocess`` and leaves ``pred_masks``
as Detectron2 ``ROIMasks`` (N x M x M probabilities) beside boxes in output-image coordinates.
lt_detectron's evaluators encode those straight to the RLEs of the pasted masks
(:func:`lt_detectron.evaluation.roi_masks.encode_roi_masks`). ``model(inputs)`` itself is
unchanged: the demo and ``DefaultPredictor`` still get full-image masks.
"""

from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances, ROIMasks
from torch import nn

__all__ = ["postprocess_keep_roi_masks", "ROIMaskInference", "roi_mask_model"]

_INDEX = "roi_index"  # a temporary field: which detections detector_postprocess kept


def postprocess_keep_roi_masks(results: Instances, output_height: int, output_width: int):
    """``detector_postprocess`` (boxes scaled to the output size, clipped, empty ones dropped), with
    ``pred_masks`` kept as ``ROIMasks`` of the surviving detections instead of pasted bitmaps."""
    if not results.has("pred_masks"):
        return detector_postprocess(results, output_height, output_width)
    fields = dict(results.get_fields())
    masks = fields.pop("pred_masks")
    if _INDEX in fields:
        raise ValueError(f"Instances already have a field {_INDEX!r}; rename it")
    fields[_INDEX] = torch.arange(len(results), device=masks.device)
    out = detector_postprocess(Instances(results.image_size, **fields), output_height, output_width)
    keep = out.get(_INDEX)
    out.remove(_INDEX)
    roi = masks if isinstance(masks, ROIMasks) else ROIMasks(masks[:, 0])
    out.pred_masks = roi[keep]
    return out


class ROIMaskInference(nn.Module):
    """A ``GeneralizedRCNN`` (or its DistributedDataParallel wrapper) for ``inference_on_dataset``:
    the same outputs as ``model(inputs)`` in eval mode, except that ``pred_masks`` are ``ROIMasks``
    (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs: List[Dict]):
        rcnn = getattr(self.model, "module", self.model)
        if rcnn.training:
            raise RuntimeError("ROIMaskInference is for inference: put the model in eval mode")
        results = rcnn.inference(batched_inputs, do_postprocess=False)
        out = []
        for r, inp in zip(results, batched_inputs):
            h = inp.get("height", r.image_size[0])
            w = inp.get("width", r.image_size[1])
            out.append({"instances": postprocess_keep_roi_masks(r, h, w)})
        return out


def roi_mask_model(model: nn.Module) -> nn.Module:
    """``ROIMaskInference(model)`` for a ``GeneralizedRCNN`` that predicts masks, else ``model``."""
    rcnn = getattr(model, "module", model)
    if isinstance(rcnn, GeneralizedRCNN) and getattr(rcnn.roi_heads, "mask_on", False):
        return ROIMaskInference(model)
    return model
