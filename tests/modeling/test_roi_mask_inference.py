"""ROIMaskInference: the evaluation run of a Mask R-CNN keeps ROI-level masks whose RLEs equal those
of the pasted masks; ``model(inputs)`` (demo, DefaultPredictor) still returns full-image masks."""

import numpy as np
import pytest
import torch
from detectron2.structures import ROIMasks
from pycocotools import mask as mask_util

from lt_detectron.evaluation import encode_roi_masks
from lt_detectron.modeling import ROIMaskInference, postprocess_keep_roi_masks, roi_mask_model
from lt_detectron.utils.testing import build_tiny_mask_rcnn as tiny_mask_rcnn
from lt_detectron.utils.testing import tiny_dense_inputs


@pytest.fixture(scope="module")
def model():
    return tiny_mask_rcnn()


def _inputs():
    # output sizes differ from the input size: boxes are rescaled (and clipped) on the way out
    return tiny_dense_inputs(2, 64, 80, with_boxes=False, seed=1, out_hw=(91, 117))


def test_eval_inference_wrapper_returns_roi_masks(model):
    with torch.no_grad():
        pasted = model(_inputs())
        roi = ROIMaskInference(model)(_inputs())
    for p, r in zip(pasted, roi):
        p, r = p["instances"], r["instances"]
        assert isinstance(r.pred_masks, ROIMasks) and r.pred_masks.tensor.shape[1:] == (28, 28)
        assert len(r) == len(p) > 0
        assert r.image_size == p.image_size == (91, 117)
        assert torch.equal(r.pred_boxes.tensor, p.pred_boxes.tensor)
        assert torch.equal(r.scores, p.scores) and torch.equal(r.pred_classes, p.pred_classes)
        ref = mask_util.encode(
            np.asfortranarray(p.pred_masks.numpy().astype(np.uint8).transpose(1, 2, 0))
        )
        ours = encode_roi_masks(r.pred_masks.tensor, r.pred_boxes.tensor, r.image_size)
        assert ours == [{"size": tuple(x["size"]), "counts": x["counts"].decode()} for x in ref]


def test_demo_and_predictor_still_get_full_image_masks(model):
    """``model(inputs)`` is what tools/demo.py and DefaultPredictor call: unchanged."""
    with torch.no_grad():
        out = model(_inputs())
    m = out[0]["instances"].pred_masks
    assert isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.shape[1:] == (91, 117)


def test_postprocess_keep_roi_masks_drops_what_detector_postprocess_drops():
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    masks = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def inst():  # detector_postprocess scales the boxes in place: a fresh copy per call
        i = Instances((20, 30))
        # the second box is empty once clipped to the image: detector_postprocess drops it
        i.pred_boxes = Boxes(
            torch.tensor([[1.0, 2.0, 10.0, 12.0], [40.0, 5.0, 50.0, 9.0], [0, 0, 30, 20.0]])
        )
        i.scores = torch.tensor([0.9, 0.8, 0.7])
        i.pred_masks = masks
        return i

    ours = postprocess_keep_roi_masks(inst(), 40, 60)
    ref = detector_postprocess(inst(), 40, 60)
    assert len(ours) == len(ref) == 2
    assert torch.equal(ours.pred_masks.tensor, masks[[0, 2], 0])
    assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)
    assert not ours.has("roi_index")


def test_roi_mask_model_only_wraps_mask_rcnn(model):
    assert isinstance(roi_mask_model(model), ROIMaskInference)
    box_only = tiny_mask_rcnn(mask_on=False)
    assert roi_mask_model(box_only) is box_only
