"""Fixed AP and pooled AP (Dave et al. 2021) against independent computations on lvis-api, and the
top-k-per-class selection used at inference and evaluation.

References in this file are independent transcriptions of the authors' procedure
(large-vocab-devil: ``scripts/evaluate_ap_fixed.py``, ``scripts/evaluate_ap_pooled.py``), run on
lvis-api 0.5.3: the top-k per class is Python's ``sorted(..., reverse=True)[:k]`` per category, then
``LVISResults(max_dets=-1)`` and ``params.max_dets = -1``; pooled AP ranks the detections of a pool
after lvis-api's own per-image, per-category matching.
"""

import copy
import json
import logging
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torch

from lt_detectron.compat import ensure_lvis_numpy_compat
from lt_detectron.evaluation import LTLVISEvaluator, evaluate_lvis_predictions
from lt_detectron.modeling.topk_inference import (
    ClassTopKThresholds,
    per_class_nms,
    topk_per_class_inference,
    topk_per_group_mask,
)
from lt_detectron.utils.testing import (
    detections_to_instances,
    detections_to_results,
    make_detections,
    make_lvis_like_gt,
)
from lt_detectron.utils.testing import lt_cfg

from tests._data import IMAGE_SIZE, eval_categories

K = 40  # detections per class kept (small, so that many classes exceed it)


# ---------------------------------------------------------------- references (lvis-api)
def _authors_topk(results, k):
    by_cat = defaultdict(list)
    for r in results:
        by_cat[r["category_id"]].append(r)
    out = []
    for anns in by_cat.values():
        out.extend(sorted(anns, key=lambda x: x["score"], reverse=True)[:k])
    return out


def _lvis_eval(gt_path, results, iou_type, max_dets=-1, only_all_area=False):
    from lvis import LVIS, LVISEval, LVISResults

    ensure_lvis_numpy_compat()
    logging.getLogger("lvis").setLevel(logging.WARNING)
    gt = LVIS(gt_path)
    ev = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=max_dets), iou_type)
    ev.params.max_dets = max_dets
    if only_all_area:
        ev.params.area_rng, ev.params.area_rng_lbl = (
            ev.params.area_rng[:1],
            ev.params.area_rng_lbl[:1],
        )
    return ev


def _reference_pooled(ev, pool_idx):
    """Independent transcription of the authors' pooled accumulation (one pool, area 'all')."""
    p = ev.params
    n_img = len(p.img_ids)
    E = [ev.eval_imgs[c * len(p.area_rng) * n_img + i] for i in range(n_img) for c in pool_idx]
    E = [e for e in E if e is not None]
    scores = np.concatenate([e["dt_scores"] for e in E])
    order = np.argsort(-scores, kind="mergesort")
    dt_m = np.concatenate([e["dt_matches"] for e in E], axis=1)[:, order]
    dt_ig = np.concatenate([e["dt_ignore"] for e in E], axis=1)[:, order]
    num_gt = int(np.count_nonzero(np.concatenate([e["gt_ignore"] for e in E]) == 0))
    if num_gt == 0:
        return float("nan")
    tps = np.cumsum(np.logical_and(dt_m, np.logical_not(dt_ig)), axis=1).astype(float)
    fps = np.cumsum(np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig)), axis=1).astype(
        float
    )
    prec = []
    for tp, fp in zip(tps, fps):
        rc = tp / num_gt
        pr = list(tp / (fp + tp + np.spacing(1)))
        for i in range(len(tp) - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        q = [0.0] * len(p.rec_thrs)
        for j, pi in enumerate(np.searchsorted(rc, p.rec_thrs, side="left")):
            if pi >= len(pr):
                break
            q[j] = pr[pi]
        prec.append(q)
    return float(np.mean(prec))


# ---------------------------------------------------------------- data
def _make(num_images=10, with_masks=False, seed=0):
    cats = eval_categories()
    gt = make_lvis_like_gt(
        num_images,
        cats,
        seed=seed,
        with_masks=with_masks,
        image_size=IMAGE_SIZE,
        empty_class_ids=[cats[5]["id"]],
        sampling_power=0.2,
    )
    # 420 per image (> the 300 cap), many per image and class, quantized scores (ties)
    dets = make_detections(gt, 300, seed=seed + 1, with_masks=with_masks, extra_over_cap=120)
    return gt, dets


@pytest.fixture
def registered(tmp_path):
    from detectron2.data import MetadataCatalog

    names = []

    def reg(gt):
        name = f"lt_test_fixed_{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(gt))
        ids = sorted(c["id"] for c in gt["categories"])
        id_map = {d: i for i, d in enumerate(ids)}
        MetadataCatalog.get(name).set(
            json_file=str(path), evaluator_type="lvis", thing_dataset_id_to_contiguous_id=id_map
        )
        names.append(name)
        return name, str(path), id_map

    yield reg
    for n in names:
        MetadataCatalog.remove(n)


def _run(name, dets, id_map, tasks=("bbox",), out_dir=None, **kw):
    ev = LTLVISEvaluator(name, tasks, distributed=False, output_dir=out_dir, **kw)
    ev.reset()
    for k, d in dets.items():
        ev.process(
            [{"image_id": k}],
            [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map, "segm" in tasks)}],
        )
    return ev, ev.evaluate()


# ---------------------------------------------------------------- selection
def test_topk_per_group_mask_matches_a_stable_sort_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (500,), generator=g).float() / 5  # many ties
    groups = torch.randint(0, 7, (500,), generator=g)
    for k in (0, 1, 3, 40, 1000):
        keep = topk_per_group_mask(scores, groups, k)
        ref = set()
        for c in range(7):
            idx = [i for i in range(500) if int(groups[i]) == c]
            ref |= set(sorted(idx, key=lambda i: float(scores[i]), reverse=True)[:k])
        assert set(torch.nonzero(keep).flatten().tolist()) == ref, k


def test_thresholds_never_drop_a_dataset_topk_detection():
    """Streaming per-class thresholds + per-image selection == the dataset top-k without thresholds."""
    C, k = 5, 30
    g = torch.Generator().manual_seed(1)
    images = []
    for _ in range(40):
        R = 25
        boxes = torch.rand(R, C * 4, generator=g) * 50
        boxes[:, 2::4] += boxes[:, 0::4] + 5
        boxes[:, 3::4] += boxes[:, 1::4] + 5
        probs = torch.softmax(torch.randn(R, C + 1, generator=g) * 2, dim=1)
        probs = torch.round(probs * 50) / 50  # ties
        images.append((boxes, probs))
    shape = [(80, 80)]
    tracker = ClassTopKThresholds(C, k)
    streamed, full = [], []
    for b, s in images:
        (inst,), _ = tracker.inference([b], [s], shape, 0.0, 0.5)
        streamed.append(inst)
        (ref,), _ = topk_per_class_inference([b], [s], shape, 0.0, 0.5)
        full.append(ref)
    assert tracker.thresholds is not None and torch.isfinite(tracker.thresholds).any()

    def dataset_topk(insts):
        sc = torch.cat([i.scores for i in insts])
        cl = torch.cat([i.pred_classes for i in insts])
        bx = torch.cat([i.pred_boxes.tensor for i in insts])
        keep = topk_per_group_mask(sc, cl, k)
        return sorted(zip(cl[keep].tolist(), sc[keep].tolist(), map(tuple, bx[keep].tolist())))

    a, b = dataset_topk(streamed), dataset_topk(full)
    # same multiset of (class, score); boxes equal except among exact ties at a class's k-th score
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert sum(len(i) for i in streamed) < sum(len(i) for i in full)  # the thresholds pruned


def test_inference_without_thresholds_is_detectron2s():
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    g = torch.Generator().manual_seed(2)
    boxes = [
        torch.rand(30, 12, generator=g) * 40 + torch.tensor([0, 0, 40, 40] * 3) for _ in range(2)
    ]
    scores = [torch.softmax(torch.randn(30, 4, generator=g), 1) for _ in range(2)]
    ours, ours_idx = topk_per_class_inference(boxes, scores, [(90, 90)] * 2, 0.05, 0.5)
    ref, ref_idx = fast_rcnn_inference(boxes, scores, [(90, 90)] * 2, 0.05, 0.5, -1)
    for a, b, ia, ib in zip(ours, ref, ours_idx, ref_idx):
        assert (
            torch.equal(a.scores, b.scores)
            and torch.equal(a.pred_classes, b.pred_classes)
            and torch.equal(ia, ib)
        )
    thr = torch.tensor([0.2, 0.0, 1.1])
    cut, _ = topk_per_class_inference(
        boxes, scores, [(90, 90)] * 2, 0.05, 0.5, class_thresholds=thr
    )
    for a, b in zip(cut, ref):
        sel = b.scores >= thr[b.pred_classes]
        assert torch.equal(a.scores, b.scores[sel]) and torch.equal(
            a.pred_classes, b.pred_classes[sel]
        )
    capped, _ = topk_per_class_inference(boxes, scores, [(90, 90)] * 2, 0.05, 0.5, topk_per_class=2)
    assert all(int(torch.bincount(i.pred_classes).max()) <= 2 for i in capped)
    with pytest.raises(ValueError, match="TOPK_PER_CLASS"):
        ClassTopKThresholds(3, 0)


@pytest.mark.parametrize("n", [3000, 45000])
def test_per_class_nms_is_detectron2s_batched_nms(n):
    """Same kept indices in the same order as detectron2's batched_nms, below and above the 40,000
    boxes where Detectron2 switches to its per-class loop; scores with ties, heavily overlapping
    boxes, 600 classes."""
    from detectron2.layers import batched_nms
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 30], dim=1)
    scores = torch.round(torch.rand(n, generator=g) * 20) / 20  # many exact ties
    idxs = torch.randint(0, 600, (n,), generator=g)
    ours, ref = per_class_nms(boxes, scores, idxs, 0.5), batched_nms(boxes, scores, idxs, 0.5)
    assert 0 < len(ref) < n and torch.equal(ours, ref)
    # each class's boxes reach nms in ascending index order: a naive per-class loop agrees
    naive = []
    for c in range(600):
        (sel,) = torch.where(idxs == c)
        naive.append(sel[nms(boxes[sel], scores[sel], 0.5)])
    assert torch.equal(torch.sort(torch.cat(naive)).values, torch.sort(ours).values)


def test_inference_above_40000_candidates_is_detectron2s():
    """No per-image cap and a low floor: > 40,000 candidates in one image, where Detectron2's
    batched NMS loops over the classes; boxes, scores, classes and indices are identical."""
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    g = torch.Generator().manual_seed(7)
    R, C = 60, 800
    xy = torch.rand(R, C, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + 4 + torch.rand(R, C, 2, generator=g) * 60], dim=2).reshape(R, C * 4)
    scores = torch.softmax(torch.randn(R, C + 1, generator=g), dim=1)
    boxes[3, 0] = float("nan")  # a non-finite row is dropped by both
    (ours,), (ours_idx,) = topk_per_class_inference([boxes], [scores], [(160, 200)], 1e-5, 0.5)
    (ref,), (ref_idx,) = fast_rcnn_inference([boxes], [scores], [(160, 200)], 1e-5, 0.5, -1)
    assert int((scores[:, :-1] > 1e-5).sum()) > 40000 and len(ref) > 1000
    assert torch.equal(ours_idx, ref_idx) and torch.equal(ours.scores, ref.scores)
    assert torch.equal(ours.pred_classes, ref.pred_classes)
    assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)


# ---------------------------------------------------------------- Fixed AP parity
@pytest.mark.parametrize("backend", ["hotcoco", "lvis"])
def test_fixed_ap_equals_authors_procedure_on_lvis_api(tmp_path, registered, backend):
    gt, dets = _make()
    name, gt_path, id_map = registered(gt)
    results = [
        {k: v for k, v in r.items() if k != "segmentation"} for r in detections_to_results(dets)
    ]
    per_cat = defaultdict(int)
    for r in results:
        per_cat[r["category_id"]] += 1
    assert max(per_cat.values()) > K and min(per_cat.values()) < K  # both regimes
    assert max(len(d["scores"]) for d in dets.values()) > 300  # no per-image cap in Fixed AP
    _, out = _run(
        name,
        dets,
        id_map,
        ap_protocol="fixed",
        topk_per_class=K,
        backend=backend,
        out_dir=str(tmp_path / "out"),
    )
    ref_ev = _lvis_eval(gt_path, _authors_topk(results, K), "bbox", max_dets=-1)
    ref_ev.run()
    ref = ref_ev.results
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        r, o = float(ref[key]), out["bbox"][key] / 100.0
        assert (r < 0 and np.isnan(o)) or abs(o - r) <= 1e-12, (key, o, r)
    assert abs(out["bbox"]["AR"] / 100.0 - float(ref["AR@-1"])) <= 1e-12
    # the results file holds exactly the evaluated detections: top-K per class
    with open(tmp_path / "out" / "lvis_instances_results.json") as f:
        saved = json.load(f)
    assert len(saved) == sum(min(n, K) for n in per_cat.values())


def test_fixed_ap_differs_from_standard_and_prunes_exactly(registered):
    gt, dets = _make(num_images=8)
    name, _, id_map = registered(gt)
    _, std = _run(name, dets, id_map)
    ev, fixed = _run(name, dets, id_map, ap_protocol="fixed", topk_per_class=K)
    assert (
        std["bbox"]["AP"] != fixed["bbox"]["AP"]
        and "AR@300" in std["bbox"]
        and "AR" in fixed["bbox"]
    )
    # pruning while collecting (forced after every image) gives the same result
    ev2 = LTLVISEvaluator(name, ("bbox",), distributed=False, ap_protocol="fixed", topk_per_class=K)
    ev2.reset()
    for k, d in dets.items():
        ev2._prune_at = 1
        ev2.process(
            [{"image_id": k}], [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map)}]
        )
    assert ev2._num_rows <= K * len(gt["categories"])
    assert ev2.evaluate()["bbox"] == fixed["bbox"]


@pytest.mark.slow
def test_fixed_ap_masks_equal_authors_procedure(registered):
    gt, dets = _make(num_images=6, with_masks=True)
    name, gt_path, id_map = registered(gt)
    _, out = _run(name, dets, id_map, tasks=("bbox", "segm"), ap_protocol="fixed", topk_per_class=K)
    results = [
        {k: v for k, v in r.items() if k != "bbox"} for r in detections_to_results(dets, True)
    ]
    ref_ev = _lvis_eval(gt_path, _authors_topk(results, K), "segm", max_dets=-1)
    ref_ev.run()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        r, o = float(ref_ev.results[key]), out["segm"][key] / 100.0
        assert (r < 0 and np.isnan(o)) or abs(o - r) <= 1e-12, (key, o, r)


def test_fixed_protocol_errors(registered):
    gt, _ = _make(num_images=2)
    name, _, _ = registered(gt)
    with pytest.raises(ValueError, match="TEST.LT.AP_PROTOCOL"):
        LTLVISEvaluator(name, ap_protocol="fixd")
    with pytest.raises(ValueError, match="TOPK_PER_CLASS"):
        LTLVISEvaluator(name, ap_protocol="fixed", topk_per_class=0)


# ---------------------------------------------------------------- pooled AP parity
@pytest.mark.parametrize("backend", ["hotcoco", "lvis"])
@pytest.mark.parametrize("protocol", ["standard", "fixed"])
def test_pooled_ap_equals_authors_accumulation(registered, backend, protocol):
    gt, dets = _make()
    name, gt_path, id_map = registered(gt)
    kw = dict(ap_protocol="fixed", topk_per_class=K) if protocol == "fixed" else {}
    _, out = _run(name, dets, id_map, backend=backend, pooled_ap=True, **kw)
    results = [
        {k: v for k, v in r.items() if k != "segmentation"} for r in detections_to_results(dets)
    ]
    if protocol == "fixed":
        ref_ev = _lvis_eval(
            gt_path, _authors_topk(results, K), "bbox", max_dets=-1, only_all_area=True
        )
    else:
        ref_ev = _lvis_eval(gt_path, results, "bbox", max_dets=300, only_all_area=True)
    ref_ev.evaluate()
    freq = [c["frequency"] for c in ref_ev.lvis_gt.load_cats(ref_ev.params.cat_ids)]
    pools = {"APpool": list(range(len(freq)))}
    for band in "rcf":
        pools[f"APpool-{band}"] = [i for i, f in enumerate(freq) if f == band]
    for key, idx in pools.items():
        ref = _reference_pooled(ref_ev, idx)
        assert abs(out["bbox"][key] / 100.0 - ref) <= 1e-12, (key, out["bbox"][key], ref)
    assert out["bbox"]["APpool"] != out["bbox"]["AP"]


def test_pooled_ap_on_a_hand_computed_case(tmp_path):
    """Two classes, one image each: pooling ranks class b's FP above class a's TP."""
    gt = {
        "images": [
            {
                "id": 1,
                "height": 50,
                "width": 50,
                "neg_category_ids": [2],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f"},
            {"id": 2, "name": "b", "frequency": "r"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100}
        ],
    }
    dets = np.array([[1, 0, 0, 10, 10, 0.5, 1], [1, 20, 20, 10, 10, 0.9, 2]], np.float64)
    m, _, _ = evaluate_lvis_predictions(gt, dets, None, "bbox", pooled=True)
    assert (
        abs(m["AP"] - 1.0) < 1e-12
    )  # class a: its only detection is a TP; class b has no GT (not averaged)
    # pooled: FP (0.9) then TP (0.5): recall 1 at precision 1/2 -> interpolated precision 0.5 everywhere
    assert (
        abs(m["APpool"] - 0.5) < 1e-12
        and abs(m["APpool-f"] - 1.0) < 1e-12
        and np.isnan(m["APpool-r"])
    )


# ---------------------------------------------------------------- wiring into the ROI box predictor
def test_box_predictor_keeps_topk_per_class_with_the_fixed_protocol():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
    from detectron2.structures import Boxes, Instances

    from lt_detectron.modeling import LongTailFastRCNNOutputLayers

    def predictor(protocol):
        cfg = lt_cfg()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.TEST.DETECTIONS_PER_IMAGE = 5
        cfg.TEST.LT.AP_PROTOCOL = protocol
        cfg.TEST.LT.TOPK_PER_CLASS = 12
        torch.manual_seed(0)
        return LongTailFastRCNNOutputLayers(cfg, ShapeSpec(channels=8)).eval()

    g = torch.Generator().manual_seed(3)
    feats = torch.randn(40, 8, generator=g)
    prop = Instances((64, 64))
    xy = torch.rand(40, 2, generator=g) * 40
    prop.proposal_boxes = Boxes(torch.cat([xy, xy + 4 + torch.rand(40, 2, generator=g) * 20], 1))
    std, fixed = predictor("standard"), predictor("fixed")
    assert std.class_topk is None and fixed.class_topk.k == 12
    with torch.no_grad():
        (a,), _ = std.inference(std(feats), [prop])
        preds = fixed(feats)
        (b,), _ = fixed.inference(preds, [prop])
        boxes, scores = fixed.predict_boxes(preds, [prop]), fixed.predict_probs(preds, [prop])
    assert len(a) == 5 and len(b) > 5  # no per-image cap
    (ref,), _ = fast_rcnn_inference(boxes, scores, [(64, 64)], 0.0, fixed.test_nms_thresh, -1)
    assert torch.equal(b.scores, ref.scores[topk_per_group_mask(ref.scores, ref.pred_classes, 12)])
    fixed.train()
    fixed.eval()  # a new evaluation: thresholds forgotten
    assert fixed.class_topk.thresholds is None and fixed.class_topk._scores is None


def test_build_lt_evaluator_reads_the_protocol_keys(tmp_path, registered):
    from detectron2.data import MetadataCatalog

    from lt_detectron.evaluation import LTCOCOEvaluator, build_lt_evaluator

    gt, dets = _make(num_images=3)
    name, _, id_map = registered(gt)
    cfg = lt_cfg()
    cfg.DATASETS.TRAIN = ()
    cfg.TEST.LT.AP_PROTOCOL, cfg.TEST.LT.TOPK_PER_CLASS, cfg.TEST.LT.POOLED_AP = "fixed", 7, True
    cfg.TEST.LT.SAVE_RESULTS = False
    ev = build_lt_evaluator(cfg, name, str(tmp_path / "out"))
    assert (
        isinstance(ev, LTLVISEvaluator) and ev.eval_max_dets == -1 and ev._topk == 7 and ev._pooled
    )
    ev.reset()
    for k, d in dets.items():
        ev.process(
            [{"image_id": k}], [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map)}]
        )
    res = ev.evaluate()["bbox"]
    assert "APpool-r" in res and "AR" in res
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lvis_metrics.json",
        "lvis_per_category_bbox.csv",
    ]
    cfg.TEST.LT.BOUNDARY_AP = True
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        build_lt_evaluator(cfg, name)
    cfg.TEST.LT.BOUNDARY_AP = False
    name = registered(gt)[0]
    meta = MetadataCatalog.get(name)
    MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**dict(meta.as_dict(), evaluator_type="coco_lt"))
    with pytest.raises(ValueError, match="TEST.LT.AP_PROTOCOL standard"):
        build_lt_evaluator(cfg, name)
    cfg.TEST.LT.AP_PROTOCOL = "standard"
    with pytest.raises(ValueError, match="TEST.LT.POOLED_AP False"):
        build_lt_evaluator(cfg, name)
    cfg.TEST.LT.POOLED_AP = False
    assert isinstance(build_lt_evaluator(cfg, name), LTCOCOEvaluator)
