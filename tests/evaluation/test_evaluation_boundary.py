"""Boundary AP (task "boundary", faster-coco-eval) against an independent transcription of the
reference (Cheng et al. 2021, boundary-iou-api): lvis-api's LVISEval with its IoU replaced by
min(mask IoU, boundary IoU), boundaries from an OpenCV erosion of each mask."""

import copy
import json
import logging
import uuid

import numpy as np
import pytest

from lt_detectron.compat import ensure_lvis_numpy_compat
from lt_detectron.evaluation import LTLVISEvaluator
from lt_detectron.utils.testing import (
    detections_to_instances,
    detections_to_results,
    make_detections,
    make_lvis_like_gt,
)

from tests._data import IMAGE_SIZE, eval_categories

pytest.importorskip("faster_coco_eval")
cv2 = pytest.importorskip("cv2")


def _boundary(mask: np.ndarray, ratio: float) -> np.ndarray:
    """Pixels of ``mask`` within d = max(1, round(ratio * diagonal)) of its contour (image border included)."""
    h, w = mask.shape
    d = max(1, int(round(ratio * np.hypot(h, w))))
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
    return mask - eroded


def _reference(gt_path, results, ratio=0.02):
    from lvis import LVIS, LVISEval, LVISResults
    from pycocotools import mask as mask_util

    ensure_lvis_numpy_compat()
    logging.getLogger("lvis").setLevel(logging.WARNING)

    def rle_of_boundary(rle):
        b = _boundary(mask_util.decode(rle), ratio)
        return mask_util.encode(np.asfortranarray(b))

    class BoundaryEval(LVISEval):
        def compute_iou(self, img_id, cat_id):
            gt, dt = self._get_gt_dt(img_id, cat_id)
            if len(gt) == 0 and len(dt) == 0:
                return []
            dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
            g = [self.lvis_gt.ann_to_rle(x) for x in gt]
            d = [x["segmentation"] for x in dt]
            crowd = [0] * len(g)
            ious = np.asarray(mask_util.iou(d, g, crowd))
            if len(g) == 0 or len(d) == 0:
                return ious
            b_ious = np.asarray(
                mask_util.iou(
                    [rle_of_boundary(x) for x in d], [rle_of_boundary(x) for x in g], crowd
                )
            )
            return np.minimum(ious, b_ious)

    gt = LVIS(gt_path)
    ev = BoundaryEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=300), "segm")
    ev.run()
    return ev.results


def test_boundary_ap_equals_an_independent_transcription(tmp_path):
    from detectron2.data import MetadataCatalog

    gt = make_lvis_like_gt(
        6, eval_categories(), seed=0, with_masks=True, image_size=IMAGE_SIZE, sampling_power=0.2
    )
    dets = make_detections(gt, 40, seed=1, with_masks=True)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = sorted(c["id"] for c in gt["categories"])
    id_map = {d: i for i, d in enumerate(ids)}
    name = f"lt_test_boundary_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(
        json_file=str(path), evaluator_type="lvis", thing_dataset_id_to_contiguous_id=id_map
    )
    try:
        ev = LTLVISEvaluator(
            name, ("segm", "boundary"), distributed=False, output_dir=str(tmp_path / "out")
        )
        ev.reset()
        for k, d in dets.items():
            ev.process(
                [{"image_id": k}],
                [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map, True)}],
            )
        out = ev.evaluate()
    finally:
        MetadataCatalog.remove(name)
    results = [
        {k: v for k, v in r.items() if k != "bbox"} for r in detections_to_results(dets, True)
    ]
    ref = _reference(str(path), results)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        r, o = float(ref[key]), out["boundary"][key] / 100.0
        assert (r < 0 and np.isnan(o)) or abs(o - r) <= 1e-12, (key, o, r)
    assert out["boundary"]["AP"] < out["segm"]["AP"]  # boundary IoU <= mask IoU
    assert (tmp_path / "out" / "lvis_per_category_boundary.csv").is_file()


def test_boundary_needs_masks(tmp_path):
    from lt_detectron.evaluation.boundary import evaluate_boundary_predictions

    with pytest.raises(ValueError, match="masks"):
        evaluate_boundary_predictions({}, np.zeros((0, 7)), None, 300, True)
