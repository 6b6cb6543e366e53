"""LTCOCOEvaluator: parity with pycocotools (box, mask), AP1-AP4 bins against independent
pycocotools runs restricted to each bin's classes, empty bins named, per-category csv."""

import contextlib
import copy
import csv
import io
import json
import uuid

import numpy as np
import pytest

from lt_detectron.evaluation import LTCOCOEvaluator
from lt_detectron.utils.testing import (
    detections_to_instances,
    detections_to_results,
    make_detections,
)

from tests._data import IMAGE_SIZE, FakeStats, coco_eval_gt

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pycoco(gt_path, results, iou_type, cat_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        G = COCO(gt_path)
        D = G.loadRes(copy.deepcopy(results))  # loadRes edits the dicts (adds area, box)
        E = COCOeval(G, D, iou_type)
        if cat_ids is not None:
            E.params.catIds = list(cat_ids)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats


@pytest.mark.parametrize("with_masks", [False, True])
def test_coco_lt_parity_bins_and_csv(tmp_path, with_masks):
    from detectron2.data import MetadataCatalog

    gt, cats = coco_eval_gt(with_masks=with_masks)
    dets = make_detections(gt, 60, seed=5, with_masks=with_masks)
    name = f"lt_test_coco_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = sorted(c["id"] for c in cats)
    id_map = {d: i for i, d in enumerate(ids)}
    MetadataCatalog.get(name).set(
        json_file=str(path), evaluator_type="coco_lt", thing_dataset_id_to_contiguous_id=id_map
    )
    tasks = ("bbox", "segm") if with_masks else ("bbox",)
    try:
        stats = FakeStats(cats)
        ev = LTCOCOEvaluator(
            name, tasks, distributed=False, output_dir=str(tmp_path / "out"), class_stats=stats
        )
        ev.reset()
        for k, d in dets.items():
            ev.process(
                [{"image_id": k}],
                [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map, with_masks)}],
            )
        out = ev.evaluate()
    finally:
        MetadataCatalog.remove(name)
    results = detections_to_results(dets, with_masks)
    counts = np.array([c["instance_count"] for c in cats])
    bins = [(1, 10), (10, 100), (100, 1000), (1000, np.inf)]
    for task in tasks:
        drop = (
            "bbox" if task == "segm" else "segmentation"
        )  # Detectron2 drops the box of mask results
        res = [{k: v for k, v in r.items() if k != drop} for r in results]
        ref = _pycoco(str(path), res, task)
        for i, k in enumerate(COCO_METRICS):
            if ref[i] < 0:  # undefined in pycocotools (-1) -> nan here
                assert np.isnan(out[task][k]), (task, k)
            else:
                assert abs(out[task][k] / 100 - ref[i]) <= 1e-4, (task, k)
        for b, (lo, hi) in enumerate(bins, start=1):
            members = [c["id"] for c, n in zip(cats, counts) if lo <= n < hi]
            if not members:
                assert np.isnan(out[task][f"AP{b}"])
                continue
            ref_b = _pycoco(str(path), res, task, cat_ids=members)[0]
            assert abs(out[task][f"AP{b}"] / 100 - ref_b) <= 1e-4, (task, b)
        assert any("AP3 [100,1000): no class" in e for e in ev.empty_bins)
        with open(tmp_path / "out" / f"coco_per_category_{task}.csv") as f:
            rows = {int(r["category_id"]): r for r in csv.DictReader(f)}
        assert set(rows) == set(ids)
        for cid in ids[:4]:
            single = _pycoco(str(path), res, task, cat_ids=[cid])[0]
            if single < 0:
                assert rows[cid]["AP"] == "nan"
            else:
                assert abs(float(rows[cid]["AP"]) / 100 - single) <= 1e-4
        assert int(rows[ids[-2]]["train_instances"]) == 20000


def test_pycocotools_backend_matches(tmp_path):
    from lt_detectron.evaluation import evaluate_coco_predictions

    gt, _ = coco_eval_gt(num_images=6)
    dets = make_detections(gt, 40, seed=2)
    arr = np.array(
        [
            [r["image_id"], *r["bbox"], r["score"], r["category_id"]]
            for r in detections_to_results(dets)
        ]
    )
    a, pa, _ = evaluate_coco_predictions(gt, arr, None, "bbox", backend="hotcoco")
    b, pb, _ = evaluate_coco_predictions(gt, arr, None, "bbox", backend="pycocotools")
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-4 or (np.isnan(a[k]) and np.isnan(b[k])), k
    np.testing.assert_allclose(pa, pb, atol=1e-6)
