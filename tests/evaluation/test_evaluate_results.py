"""The standard results json and tools/evaluate_results.py: evaluating in process, saving the results
file, then evaluating that file in a subprocess gives identical metrics and csv; bad inputs give errors
that name the file and the fix."""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from lt_detectron.evaluation import (
    LTCOCOEvaluator,
    LTLVISEvaluator,
    load_results_json,
    write_results_json,
)
from lt_detectron.utils.testing import (
    detections_to_instances,
    detections_to_results,
    make_detections,
    make_lvis_like_gt,
)

from tests._data import IMAGE_SIZE, coco_eval_gt, eval_categories

from tests._data import ROOT

TOOL = os.path.join(ROOT, "tools", "evaluate_results.py")


def _tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, TOOL, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _evaluate(cls, tmp_path, gt, dets, tasks, evaluator_type, **kw):
    from detectron2.data import MetadataCatalog

    name = f"lt_test_rt_{uuid.uuid4().hex[:8]}"
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    ids = sorted(c["id"] for c in gt["categories"])
    id_map = {d: i for i, d in enumerate(ids)}
    MetadataCatalog.get(name).set(
        json_file=str(gt_path),
        evaluator_type=evaluator_type,
        thing_dataset_id_to_contiguous_id=id_map,
    )
    try:
        ev = cls(name, tasks, distributed=False, output_dir=str(tmp_path / "inproc"), **kw)
        ev.reset()
        for k, d in dets.items():
            ev.process(
                [{"image_id": k}],
                [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map, "segm" in tasks)}],
            )
        return ev.evaluate(), gt_path
    finally:
        MetadataCatalog.remove(name)


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        x, y = a[k], b[k]
        assert (x is None and y is None) or x == y, (k, x, y)  # identical, not close


@pytest.mark.slow
@pytest.mark.parametrize("masks", [False, True])
def test_lvis_round_trip_through_the_results_file(tmp_path, masks):
    cats = eval_categories()
    gt = make_lvis_like_gt(
        12, cats, seed=0, with_masks=masks, image_size=IMAGE_SIZE, sampling_power=0.2
    )
    dets = make_detections(gt, 300, seed=1, with_masks=masks, extra_over_cap=30)
    tasks = ("bbox", "segm") if masks else ("bbox",)
    inproc, gt_path = _evaluate(LTLVISEvaluator, tmp_path, gt, dets, tasks, "lvis", pooled_ap=True)
    results_file = tmp_path / "inproc" / "lvis_instances_results.json"
    with open(results_file) as f:
        saved = json.load(f)
    assert len(saved) == 300 * len(dets) and all(
        r["category_id"] in {c["id"] for c in cats} for r in saved
    )
    assert ("segmentation" in saved[0]) == masks and "bbox" in saved[0]
    p = _tool(
        results_file, "--gt", gt_path, "--output", tmp_path / "tool", "TEST.LT.POOLED_AP", "True"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "APr" in p.stdout and "AP[0,10)" in p.stdout  # the tables are printed
    with open(tmp_path / "inproc" / "lvis_metrics.json") as f:
        a = json.load(f)["results"]
    with open(tmp_path / "tool" / "lvis_metrics.json") as f:
        b = json.load(f)["results"]
    assert list(a) == list(tasks) and "APpool" in a["bbox"]
    for task in tasks:
        _same(a[task], b[task])
        assert a[task] == {k: (None if np.isnan(v) else v) for k, v in inproc[task].items()}
        with (
            open(tmp_path / "inproc" / f"lvis_per_category_{task}.csv") as f1,
            open(tmp_path / "tool" / f"lvis_per_category_{task}.csv") as f2,
        ):
            assert f1.read() == f2.read()


@pytest.mark.slow
def test_fixed_ap_round_trip(tmp_path):
    cats = eval_categories()
    gt = make_lvis_like_gt(10, cats, seed=2, image_size=IMAGE_SIZE, sampling_power=0.2)
    dets = make_detections(gt, 300, seed=3, extra_over_cap=100)
    inproc, gt_path = _evaluate(
        LTLVISEvaluator,
        tmp_path,
        gt,
        dets,
        ("bbox",),
        "lvis",
        ap_protocol="fixed",
        topk_per_class=30,
    )
    cfg = tmp_path / "fixed.yaml"
    cfg.write_text("TEST:\n  LT:\n    AP_PROTOCOL: fixed\n    TOPK_PER_CLASS: 30\n")
    p = _tool(
        tmp_path / "inproc" / "lvis_instances_results.json",
        "--gt",
        gt_path,
        "--config-file",
        cfg,
        "--output",
        tmp_path / "tool",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    with open(tmp_path / "tool" / "lvis_metrics.json") as f:
        b = json.load(f)
    assert b["ap_protocol"] == "fixed" and b["max_dets_per_image"] == -1
    _same(
        {k: (None if np.isnan(v) else v) for k, v in inproc["bbox"].items()}, b["results"]["bbox"]
    )


@pytest.mark.slow
def test_coco_lt_round_trip_with_training_counts(tmp_path):
    gt, cats = coco_eval_gt(num_images=10)
    dets = make_detections(gt, 60, seed=5)
    train = dict(gt, images=[dict(im, id=im["id"] + 1000) for im in gt["images"]], annotations=[])
    aid = 1
    for c in cats:  # the training counts: c["instance_count"] boxes of each class
        for i in range(min(c["instance_count"], 1200)):
            train["annotations"].append(
                {
                    "id": aid,
                    "image_id": 1001 + i % 10,
                    "category_id": c["id"],
                    "bbox": [1, 1, 10, 10],
                    "area": 100,
                    "iscrowd": 0,
                }
            )
            aid += 1
    train_path = tmp_path / "train.json"
    train_path.write_text(json.dumps(train))

    class Stats:  # what the tool counts from train.json
        dataset_ids = tuple(c["id"] for c in cats)
        class_names = tuple(c["name"] for c in cats)
        instance_counts = np.array([min(c["instance_count"], 1200) for c in cats])
        image_counts = np.array([min(10, max(min(c["instance_count"], 1200), 0)) for c in cats])

    inproc, gt_path = _evaluate(
        LTCOCOEvaluator, tmp_path, gt, dets, ("bbox",), "coco_lt", class_stats=Stats()
    )
    assert {"AP1", "AP2", "AP4"} <= set(inproc["bbox"])
    env_cache = tmp_path / "cache"
    os.environ["LT_DETECTRON_CACHE"] = str(env_cache)
    try:
        p = _tool(
            tmp_path / "inproc" / "coco_instances_results.json",
            "--gt",
            gt_path,
            "--train-json",
            train_path,
            "--output",
            tmp_path / "tool",
        )
    finally:
        os.environ.pop("LT_DETECTRON_CACHE")
    assert p.returncode == 0, p.stderr[-3000:]
    with open(tmp_path / "tool" / "coco_metrics.json") as f:
        b = json.load(f)["results"]["bbox"]
    _same({k: (None if np.isnan(v) else v) for k, v in inproc["bbox"].items()}, b)


# ---------------------------------------------------------------- errors
def _small_gt(tmp_path):
    gt = make_lvis_like_gt(3, eval_categories(), seed=0, image_size=IMAGE_SIZE, sampling_power=0.2)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return gt, path


def _bad_results(tmp_path):
    """``(gt_path, results, category ids, image ids, write)``: a small GT and its results, and
    ``write(obj)`` that puts a json (or raw text) into ``tmp_path / "r.json"``."""
    gt, gt_path = _small_gt(tmp_path)
    res = [
        {k: v for k, v in r.items()} for r in detections_to_results(make_detections(gt, 5, seed=1))
    ]
    cat_ids = [c["id"] for c in gt["categories"]]
    img_ids = [im["id"] for im in gt["images"]]

    def write(obj, name="r.json"):
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)

    return gt_path, res, cat_ids, img_ids, write


def test_errors_name_the_file_and_the_fix(tmp_path):
    gt_path, res, cat_ids, img_ids, write = _bad_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_results_json(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not valid JSON.*written completely"):
        load_results_json(write("[{\"image_id\": 1"))
    with pytest.raises(ValueError, match="ground-truth file.*--gt"):
        load_results_json(str(gt_path))
    with pytest.raises(ValueError, match="entry 1 lacks the key 'score'"):
        load_results_json(write([res[0], {k: v for k, v in res[1].items() if k != "score"}]))
    contiguous = [dict(r, category_id=cat_ids.index(r["category_id"])) for r in res]
    with pytest.raises(ValueError, match="not in the ground truth.*contiguous ids"):
        load_results_json(write(contiguous), category_ids=cat_ids)
    with pytest.raises(ValueError, match="image id.*another split"):
        load_results_json(write([dict(res[0], image_id=999)]), image_ids=img_ids)
    with pytest.raises(ValueError, match="non-finite"):
        load_results_json(write([dict(res[0], score=float("nan"))]))
    with pytest.raises(ValueError, match="needs a 'segmentation'.*--tasks bbox"):
        load_results_json(write(res), need_masks=True)


@pytest.mark.slow
def test_the_tool_reports_results_file_errors_on_one_line(tmp_path):
    """tools/evaluate_results.py reports them as one line on stderr, exit code 2."""
    gt_path, res, cat_ids, img_ids, write = _bad_results(tmp_path)
    contiguous = [dict(r, category_id=cat_ids.index(r["category_id"])) for r in res]
    p = _tool(write(contiguous), "--gt", gt_path)
    assert p.returncode == 2 and "contiguous ids" in p.stderr and "r.json" in p.stderr
    p = _tool(tmp_path / "nope.json", "--gt", gt_path)
    assert p.returncode == 2 and "results file not found" in p.stderr
    p = _tool(write(res), "--dataset", "no_such_dataset")
    assert p.returncode == 2 and "--gt" in p.stderr


@pytest.mark.parametrize("writer", ["polars", "orjson", "stdlib"])
def test_results_json_is_exact_and_escapes_rle_text(tmp_path, monkeypatch, writer):
    if writer == "polars":
        pytest.importorskip("polars")
    else:
        monkeypatch.setitem(sys.modules, "polars", None)  # import polars -> ImportError
    if writer == "stdlib":
        monkeypatch.setitem(sys.modules, "orjson", None)
    elif writer == "orjson":
        pytest.importorskip("orjson")
    rng = np.random.default_rng(0)
    dets = np.zeros((50, 7))
    dets[:, 0] = rng.integers(1, 4, 50)
    dets[:, 1:5] = rng.random((50, 4)).astype(np.float32) * 300
    dets[:, 5] = rng.random(50).astype(np.float32)
    dets[:, 6] = rng.integers(1, 9, 50)
    rles = [
        {"size": [5, 7], "counts": "\\\\3\"a" + str(i)} for i in range(50)
    ]  # backslashes, quotes
    path = str(tmp_path / "x.json")
    write_results_json(path, dets, rles, chunk=7)
    back, back_rles = load_results_json(path)
    assert np.array_equal(back, dets) and back_rles == rles
    with open(path) as f:
        assert json.load(f)[3]["segmentation"]["counts"] == rles[3]["counts"]
    write_results_json(path, dets[:0])
    assert load_results_json(path)[0].shape == (0, 7)


def test_results_json_writers_write_the_same_bytes(tmp_path, monkeypatch):
    """polars and orjson give byte-identical files (boxes, masks, empty); the standard library the same
    values (its separators and exponents are spelt differently: ", ", "1e-07")."""
    pytest.importorskip("polars")
    pytest.importorskip("orjson")
    rng = np.random.default_rng(3)
    n = 40
    dets = np.zeros((n, 7))
    dets[:, 0] = rng.integers(1, 2**40, n)  # large image ids stay integers
    dets[:, 1:5] = rng.random((n, 4)) * 1000  # full float64 precision
    dets[:, 1] = np.where(np.arange(n) % 5 == 0, 1e-7, dets[:, 1])  # exponent notation
    dets[:, 5] = rng.random(n)
    dets[:, 6] = rng.integers(1, 1204, n)
    counts = ['0\\\\"x' + str(i) for i in range(n)]
    rles = [
        {"size": [480, 640], "counts": c.encode("ascii") if i % 2 else c}
        for i, c in enumerate(counts)
    ]  # pycocotools' bytes and text counts
    files = {}
    for writer in ("polars", "orjson", "stdlib"):
        with monkeypatch.context() as m:
            if writer != "polars":
                m.setitem(sys.modules, "polars", None)
            if writer == "stdlib":
                m.setitem(sys.modules, "orjson", None)
            for what, r in (("boxes", None), ("masks", rles), ("empty", None)):
                path = str(tmp_path / f"{writer}_{what}.json")
                write_results_json(path, dets[:0] if what == "empty" else dets, r, chunk=7)
                files[writer, what] = open(path, "rb").read()
    for what in ("boxes", "masks", "empty"):
        assert files["polars", what] == files["orjson", what], what
        assert json.loads(files["stdlib", what]) == json.loads(files["polars", what]), what
    first = json.loads(files["polars", "masks"])[0]
    assert isinstance(first["image_id"], int) and first["image_id"] == int(dets[0, 0])
    assert first["segmentation"] == {"size": [480, 640], "counts": counts[0]}
    assert files["polars", "empty"] == b"[]"
