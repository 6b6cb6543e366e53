"""Evaluation edge cases of issue 22: area-0 detections (empty masks, degenerate boxes) against the
protocols' reference libraries, format detection from the category records, class lists and counts of
``tools/evaluate_results.py``, and bad input (deep results json, NaN ground-truth box)."""

import contextlib
import copy
import io
import json
import logging
import os

import numpy as np
import pytest

from lt_detectron.compat import ensure_lvis_numpy_compat
from lt_detectron.evaluation.coco_lt_evaluation import evaluate_coco_predictions
from lt_detectron.evaluation.lvis_evaluation import evaluate_lvis_predictions

from tests._data import unique_name, unregister, write_coco_json

from tests._data import ROOT

H, W = 40, 48


# ---------------------------------------------------------------- item 2: area-0 detections
def _rle(mask):
    import pycocotools.mask as mask_util

    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _box_mask(x, y, w, h):
    m = np.zeros((H, W), np.uint8)
    m[y : y + h, x : x + w] = 1
    return m


def _area0_case():
    """Two images, two categories (LVIS fields included; COCO ignores them). Every GT has one true
    positive below higher-scoring detections of area 0: empty masks (with a normal box, which the
    mask's area overrides), zero-width / zero-height boxes; plus boxes with negative width and height
    (positive w*h) and with a negative width only (negative w*h); and one GT of area 0."""
    gt_boxes = {(1, 1): (4, 4, 16, 12), (1, 2): (24, 20, 14, 14), (2, 1): (10, 6, 20, 20)}
    anns = []
    for k, ((img, cat), (x, y, w, h)) in enumerate(gt_boxes.items(), start=1):
        anns.append(
            {
                "id": k,
                "image_id": img,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
        )
    images = [
        {
            "id": i,
            "height": H,
            "width": W,
            "file_name": f"{i}.png",
            "neg_category_ids": [2] if i == 2 else [],
            "not_exhaustive_category_ids": [],
        }
        for i in (1, 2)
    ]
    # ground truth of area 0 (its json field): lvis-api does not load it, pycocotools does
    anns.append(dict(anns[0], id=len(anns) + 1, bbox=[30, 4, 10, 10], area=0))
    cats = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}]
    gt = {"images": images, "annotations": anns, "categories": cats}
    rows, masks = [], []
    empty = np.zeros((H, W), np.uint8)
    for (img, cat), (x, y, w, h) in gt_boxes.items():
        s = 0.3 + 0.1 * cat + 0.03 * img
        cand = [
            ((x + 1, y, w, h), s, _box_mask(x + 1, y, w, h)),  # the true positive
            ((x, y, 0.0, h), s + 0.3, empty),  # area 0
            ((x, y, w, 0.0), s + 0.25, empty),
            ((x + w, y + h, -w, -h), s + 0.2, _box_mask(x, y, 2, 2)),  # w*h > 0
            ((x, y, -3.0, h), s + 0.15, empty),  # w*h < 0
            ((1, 1, 5, 5), s + 0.07, _box_mask(1, 1, 5, 5)),  # a plain false positive
        ]
        for box, score, m in cand:
            rows.append([img, *box, score, cat])
            masks.append(_rle(m))
    # a detection on the area-0 ground truth: a true positive for pycocotools, a false one for lvis-api
    rows.append([1, 30, 4, 10, 10, 0.48, 1])
    masks.append(_rle(_box_mask(30, 4, 10, 10)))
    # image 2, category 2 is a verified negative: two false positives, one of them empty
    rows += [[2, 2, 2, 6, 6, 0.95, 2], [2, 2, 2, 0, 6, 0.9, 2]]
    masks += [_rle(_box_mask(2, 2, 6, 6)), _rle(empty)]
    return gt, np.asarray(rows, np.float64), masks


def _results(dets, masks, iou_type):
    out = []
    for k, r in enumerate(dets):
        d = {"image_id": int(r[0]), "category_id": int(r[6]), "score": float(r[5])}
        if iou_type == "bbox":
            d["bbox"] = [float(v) for v in r[1:5]]
        else:
            d["segmentation"] = dict(masks[k])  # without its box, as Detectron2 passes them
        out.append(d)
    return out


def _lvis_reference(gt, results, iou_type, max_dets):
    from lvis import LVIS, LVISEval, LVISResults

    ensure_lvis_numpy_compat()
    logging.getLogger("lvis").setLevel(logging.WARNING)
    G = LVIS.__new__(LVIS)
    G.logger = logging.getLogger("lvis.lvis")
    G.dataset = copy.deepcopy(gt)
    G._create_index()
    E = LVISEval(G, LVISResults(G, copy.deepcopy(results), max_dets=max_dets), iou_type)
    E.params.max_dets = max_dets
    E.run()
    return {k: float(v) for k, v in E.results.items()}


def _coco_reference(gt, results, iou_type, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        G = COCO()
        G.dataset = copy.deepcopy(gt)
        G.createIndex()
        E = COCOeval(G, G.loadRes(copy.deepcopy(results)), iou_type)
        E.params.maxDets = [1, 10, max_dets]
        E.evaluate()
        E.accumulate()
        E.summarize()
    return dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), map(float, E.stats)))


def _assert_same(ours, ref):
    for k, r in ref.items():
        o = ours[k]
        assert (np.isnan(o) and r < 0) or abs(o - r) <= 1e-6, (k, o, r)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", ["hotcoco", "lvis"])
def test_area0_detections_match_lvis_api(iou_type, backend):
    gt, dets, masks = _area0_case()
    # image 1 has 13 detections: lvis-api caps them to 12 (dropping the lowest, a true positive)
    # before it drops those of area 0
    max_dets = 12
    ref = _lvis_reference(gt, _results(dets, masks, iou_type), iou_type, max_dets)
    ours, _, _ = evaluate_lvis_predictions(
        gt, dets, masks if iou_type == "segm" else None, iou_type, max_dets, backend
    )
    assert ref["AP"] > 0
    _assert_same(ours, {k: v for k, v in ref.items() if k in ours or k.startswith("AR@")})
    # without the cap too (Fixed AP evaluates every detection)
    ref = _lvis_reference(gt, _results(dets, masks, iou_type), iou_type, -1)
    ours, _, _ = evaluate_lvis_predictions(
        gt, dets, masks if iou_type == "segm" else None, iou_type, -1, backend
    )
    _assert_same(ours, {k: v for k, v in ref.items() if k in ours})


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", ["hotcoco", "pycocotools"])
def test_area0_detections_match_pycocotools(iou_type, backend):
    """pycocotools keeps area-0 results (false positives, in area range 'all' and 'small')."""
    gt, dets, masks = _area0_case()
    for im in gt["images"]:
        im.pop("neg_category_ids"), im.pop("not_exhaustive_category_ids")
    gt["categories"] = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
    ref = _coco_reference(gt, _results(dets, masks, iou_type), iou_type, 100)
    ours, _, _ = evaluate_coco_predictions(
        gt, dets, masks if iou_type == "segm" else None, iou_type, 100, backend
    )
    assert ref["AP"] > 0
    _assert_same(ours, ref)


def test_area0_detections_all_dropped_give_zero_ap():
    """Only area-0 detections: lvis-api evaluates none of them (AP 0), and so does hotcoco's path."""
    gt, dets, masks = _area0_case()
    zero = dets[:, 3] * dets[:, 4] == 0
    ref = _lvis_reference(gt, _results(dets[zero], None, "bbox"), "bbox", 300)
    ours, _, _ = evaluate_lvis_predictions(gt, dets[zero], None, "bbox", 300, "hotcoco")
    _assert_same(ours, {k: v for k, v in ref.items() if k in ours})


# ---------------------------------------------------------------- item 3: format detection
def test_format_detected_from_category_records(tmp_path):
    """A COCO json with the bytes "frequency" outside its category records (an ``info.frequency``
    key, a category named "frequency") is COCO, registered and loaded alike; LVIS categories (each
    with ``frequency``) are LVIS; some with it and some without is an error naming the file."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from lt_detectron.data import is_lvis_format, read_json_categories, register_lt_dataset
    from lt_detectron.data.validation import DatasetFormatError

    coco = str(tmp_path / "coco.json")
    data = write_coco_json(coco, [2, 1, 3])
    data["info"] = {"frequency": "yearly", "description": "COCO-format"}
    data["categories"][1]["name"] = "frequency"
    with open(coco, "w") as f:
        json.dump(data, f)
    lvis = str(tmp_path / "lvis.json")
    write_coco_json(lvis, [2, 1, 3], lvis=True)
    with open(lvis) as f:
        lvis_data = json.load(f)
    for c, band in zip(lvis_data["categories"], "rcf"):
        c["frequency"] = band
    with open(lvis, "w") as f:
        json.dump(lvis_data, f)
    names = [unique_name("coco"), unique_name("lvis")]
    try:
        for n, path, want in zip(names, (coco, lvis), ("coco_lt", "lvis")):
            register_lt_dataset(n, path, str(tmp_path))
            assert MetadataCatalog.get(n).evaluator_type == want
            assert is_lvis_format(path) is (want == "lvis")
            assert read_json_categories(path).is_lvis is (want == "lvis")
            DatasetCatalog.get(n)  # loading fills / checks the same metadata
            assert MetadataCatalog.get(n).json_format == want[:4]
    finally:
        unregister(*names)
    del lvis_data["categories"][2]["frequency"]
    mixed = str(tmp_path / "mixed.json")
    with open(mixed, "w") as f:
        json.dump(lvis_data, f)
    with pytest.raises(DatasetFormatError, match=r"mixed\.json.*category id 16 \('class_2'\)"):
        read_json_categories(mixed)


# ---------------------------------------------------------------- tools/evaluate_results.py
def _tool(*args):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "evaluate_results.py"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _results_file(tmp_path, gt, name="results.json"):
    a = gt["annotations"][0]
    res = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
    ]
    path = tmp_path / name
    path.write_text(json.dumps(res))
    return path


@pytest.mark.slow  # starts the tool
def test_train_json_class_names_must_match_gt(tmp_path):
    """COCO ground truth with an LVIS training json: an error naming both files and the first
    differing classes (the counts were matched by numeric id: "person" got those of LVIS id 1)."""
    from lt_detectron.utils.testing import coco_categories, lvis_v1_categories

    from tests._real_formats import coco_json, lvis_v1_json

    gt_path, train_path = tmp_path / "coco_val.json", tmp_path / "lvis_train.json"
    gt = coco_json(str(gt_path), [[1, 3], [1]])
    lvis_v1_json(str(train_path), [[1, 2], [3]])
    first_lvis = min(lvis_v1_categories(), key=lambda c: c["id"])["name"]
    first_coco = min(coco_categories(), key=lambda c: c["id"])["name"]
    p = _tool(_results_file(tmp_path, gt), "--gt", gt_path, "--train-json", train_path)
    assert p.returncode == 2, p.stdout[-2000:]
    err = p.stderr
    assert str(gt_path) in err and str(train_path) in err, err[-2000:]
    assert f"index 0: {first_lvis!r} vs {first_coco!r}" in err, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.slow  # starts the tool
def test_gt_nan_box_names_file_and_annotation(tmp_path):
    gt_path = tmp_path / "gt_nan.json"
    gt = write_coco_json(str(gt_path), [2, 2])
    bad = gt["annotations"][2]
    bad["bbox"][1] = float("nan")
    gt_path.write_text(json.dumps(gt))  # NaN, as Python writes it
    p = _tool(_results_file(tmp_path, gt), "--gt", gt_path)
    assert p.returncode == 2
    err = p.stderr
    assert str(gt_path) in err, err[-2000:]
    assert f"image id {bad['image_id']}, annotation id {bad['id']}" in err, err[-2000:]
    assert "fix or remove" in err and "Traceback" not in err


def test_deeply_nested_results_json_names_the_file(tmp_path):
    from lt_detectron.evaluation import load_results_json

    path = tmp_path / "deep_results.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep_results\.json nests .* too deeply"):
        load_results_json(str(path))


# ---------------------------------------------------------------- item 5: counts and the cache
def _naive_counts(data):
    ids = sorted(c["id"] for c in data["categories"])
    inst = [0] * len(ids)
    imgs = [set() for _ in ids]
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            inst[ids.index(a["category_id"])] += 1
            imgs[ids.index(a["category_id"])].add(a["image_id"])
    return inst, [len(s) for s in imgs]


def test_class_counts_come_from_annotations_with_or_without_cache(tmp_path, monkeypatch):
    """A dataset with an attached table that its json does not match (``lvis_v1_train`` pointing at
    a subset): the counts of the annotations, whether a cache entry exists or not; the table as is
    only when the json is absent, and then a warning says so."""
    from lt_detectron.class_stats import build_class_stats
    from lt_detectron.data import register_lt_dataset

    monkeypatch.setenv("LT_DETECTRON_CACHE", str(tmp_path / "cache"))
    path = str(tmp_path / "subset.json")
    data = write_coco_json(path, [3, 1, 2], images_per_class=[2, 1, 1])
    inst, imgs = _naive_counts(data)
    table = {"instance_counts": [300, 100, 200], "image_counts": [30, 10, 20], "num_images": 50}
    names = [unique_name("subset"), unique_name("absent")]
    log = logging.getLogger("lt_detectron.class_stats")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    try:
        register_lt_dataset(names[0], path, str(tmp_path), class_stats=dict(table))
        for expected_source in ("counted", "cache"):  # no cache entry yet, then one
            s = build_class_stats(names[0])
            assert s.source == expected_source
            assert s.instance_counts.tolist() == inst and s.image_counts.tolist() == imgs
        classes = [c["name"] for c in data["categories"]]
        register_lt_dataset(
            names[1],
            str(tmp_path / "missing.json"),
            str(tmp_path),
            thing_classes=classes,
            class_stats=dict(table),
        )
        s = build_class_stats(names[1])
        assert s.source == "table"
        assert s.instance_counts.tolist() == table["instance_counts"]
        assert any("missing.json are absent" in r.getMessage() for r in records)
    finally:
        log.removeHandler(handler)
        unregister(*names)


@pytest.mark.slow  # starts the tool
def test_evaluate_results_says_when_counts_come_from_the_shipped_table(tmp_path):
    """``lvis_v1_train`` without its json: the shipped table, and the output says so."""
    import subprocess
    import sys

    from tests._real_formats import lvis_v1_json

    gt_path = tmp_path / "lvis_val.json"
    gt = lvis_v1_json(str(gt_path), [[1, 3], [1]], split="val2017")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env["DETECTRON2_DATASETS"] = str(tmp_path / "no_datasets")  # lvis_v1_train.json is absent
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "evaluate_results.py"),
            str(_results_file(tmp_path, gt)),
            "--gt",
            str(gt_path),
            "--train-dataset",
            "lvis_v1_train",
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WARNING: the training counts of lvis_v1_train" in p.stdout, p.stdout[-2000:]
    assert "lvis_v1_train.json are absent" in p.stdout + p.stderr
    with open(tmp_path / "out" / "lvis_metrics.json") as f:
        assert json.load(f)["class_stats_source"] == "table"
