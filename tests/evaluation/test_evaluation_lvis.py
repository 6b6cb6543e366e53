"""LTLVISEvaluator: parity with lvis-api 0.5.3 (box and mask), cap, per-category / per-group
values against independent lvis-api runs, distributed == single process, clear errors."""

import copy
import csv
import json
import logging
import uuid

import numpy as np
import pytest

from lt_detectron.compat import ensure_lvis_numpy_compat
from lt_detectron.evaluation import LTLVISEvaluator
from tests._data import IMAGE_SIZE, FakeStats, eval_categories
from lt_detectron.utils.testing import (
    detections_to_instances,
    detections_to_results,
    make_detections,
    make_lvis_like_gt,
)
from lt_detectron.utils.testing import lt_cfg

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300")
EMPTY = (5, 17, 29)  # classes without any GT in the split


def _make(num_images=24, with_masks=False, seed=0):
    cats = eval_categories()
    gt = make_lvis_like_gt(
        num_images,
        cats,
        seed=seed,
        with_masks=with_masks,
        image_size=IMAGE_SIZE,
        empty_class_ids=[cats[i]["id"] for i in EMPTY],
        sampling_power=0.2,
    )
    # 300-per-image cap exercised: 340 detections per image
    dets = make_detections(gt, 300, seed=seed + 1, with_masks=with_masks, extra_over_cap=40)
    return gt, dets


def _register(tmp_path, gt, evaluator_type="lvis"):
    from detectron2.data import MetadataCatalog

    name = f"lt_test_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gt))
    ids = sorted(c["id"] for c in gt["categories"])
    MetadataCatalog.get(name).set(
        json_file=str(path),
        evaluator_type=evaluator_type,
        thing_classes=[str(i) for i in ids],
        thing_dataset_id_to_contiguous_id={d: i for i, d in enumerate(ids)},
    )
    return name, str(path), {d: i for i, d in enumerate(ids)}


@pytest.fixture
def registered(tmp_path):
    from detectron2.data import MetadataCatalog

    names = []

    def reg(gt, evaluator_type="lvis"):
        out = _register(tmp_path, gt, evaluator_type)
        names.append(out[0])
        return out

    yield reg
    for n in names:
        MetadataCatalog.remove(n)


def _lvis_api(gt_path, results, iou_type, cat_ids=None):
    from lvis import LVIS, LVISEval, LVISResults

    ensure_lvis_numpy_compat()
    logging.getLogger("lvis").setLevel(logging.WARNING)
    gt = LVIS(gt_path)
    ev = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=300), iou_type)
    if cat_ids is not None:
        ev.params.cat_ids = list(cat_ids)
    ev.run()
    return {k: float(v) for k, v in ev.results.items()}


def _run_evaluator(
    name, gt, dets, tasks, out_dir, id_map, class_stats=None, backend="auto", distributed=False
):
    ev = LTLVISEvaluator(
        name,
        tasks,
        distributed=distributed,
        output_dir=out_dir,
        class_stats=class_stats,
        backend=backend,
    )
    ev.reset()
    imgs = {im["id"]: im for im in gt["images"]}
    items = list(dets.items())
    for i in range(0, len(items), 2):  # batches of 2 images
        batch = items[i : i + 2]
        inputs = [
            {"image_id": k, "height": imgs[k]["height"], "width": imgs[k]["width"]}
            for k, _ in batch
        ]
        outputs = [
            {"instances": detections_to_instances(d, IMAGE_SIZE, id_map, "segm" in tasks)}
            for _, d in batch
        ]
        ev.process(inputs, outputs)
    return ev.evaluate()


def _assert_parity(ours, ref):
    for k in METRICS:
        r = ref[k]
        o = ours[k] / 100.0
        if r < 0:
            assert np.isnan(o), (k, o, r)
        else:
            assert abs(o - r) <= 1e-4, (k, o, r)


def test_numpy_compat_is_local():
    ensure_lvis_numpy_compat()
    ensure_lvis_numpy_compat()
    import lvis.eval

    assert lvis.eval.np.float is float
    assert lvis.eval.np.cumsum is np.cumsum
    assert "float" not in np.__dict__  # numpy itself untouched


@pytest.mark.parametrize(
    "tasks", [("bbox",), pytest.param(("bbox", "segm"), marks=pytest.mark.slow)]
)
def test_parity_with_lvis_api_through_instances(tmp_path, registered, tasks):
    with_masks = "segm" in tasks
    gt, dets = _make(with_masks=with_masks)
    assert any(im["neg_category_ids"] for im in gt["images"])
    assert any(im["not_exhaustive_category_ids"] for im in gt["images"])
    assert all(len(d["scores"]) == 340 for d in dets.values())
    name, gt_path, id_map = registered(gt)
    stats = FakeStats(gt["categories"])
    out = _run_evaluator(name, gt, dets, tasks, str(tmp_path / "out"), id_map, class_stats=stats)
    # reference: lvis-api on the uncapped results (LVISResults applies the 300 cap itself)
    results = detections_to_results(dets, with_masks)
    assert len(results) == 340 * len(dets)
    for task in tasks:
        # mask results without their box, as Detectron2's LVISEvaluator passes them (mask area and box)
        drop = "bbox" if task == "segm" else "segmentation"
        res = [{k: v for k, v in r.items() if k != drop} for r in results]
        ref = _lvis_api(gt_path, res, task)
        assert min(ref[k] for k in ("APr", "APc", "APf")) > 0  # all bands present
        _assert_parity(out[task], ref)
        # per-category csv, checked against lvis-api restricted to one category at a time
        with open(tmp_path / "out" / f"lvis_per_category_{task}.csv") as f:
            rows = {int(r["category_id"]): r for r in csv.DictReader(f)}
        assert len(rows) == len(gt["categories"])
        for i in EMPTY:
            cid = gt["categories"][i]["id"]
            assert rows[cid]["AP"] == "nan"
        for cat in gt["categories"][::11]:
            cid = cat["id"]
            if cat in [gt["categories"][i] for i in EMPTY]:
                continue
            single = _lvis_api(gt_path, res, task, cat_ids=[cid])
            if single["AP"] < 0:  # no GT of this class in the split
                assert rows[cid]["AP"] == "nan"
            else:
                assert abs(float(rows[cid]["AP"]) / 100 - single["AP"]) <= 1e-4
            assert int(rows[cid]["train_instances"]) == cat["instance_count"]
            assert int(rows[cid]["train_images"]) == cat["image_count"]
            assert rows[cid]["frequency"] == cat["frequency"]
        # AP per instance-count group, against lvis-api restricted to the group's categories
        groups = stats.instance_groups()
        assert len(groups) >= 3
        for lo, hi, ids in groups:
            key = f"AP[{int(lo)},{'inf' if hi == float('inf') else int(hi)})"
            cids = [stats.dataset_ids[i] for i in ids]
            ref_g = _lvis_api(gt_path, res, task, cat_ids=cids)["AP"]
            assert ref_g >= 0, key  # every group has validation GT here
            assert abs(out[task][key] / 100 - ref_g) <= 1e-4, key
        if task == "bbox":
            break  # group/category checks once per task are enough for segm too (same code path)


def test_lvis_backend_equals_fast_backend(tmp_path, registered):
    gt, dets = _make(num_images=10)
    name, _, id_map = registered(gt)
    fast = _run_evaluator(name, gt, dets, ("bbox",), None, id_map, backend="hotcoco")
    ref = _run_evaluator(name, gt, dets, ("bbox",), None, id_map, backend="lvis")
    for k in fast["bbox"]:
        a, b = fast["bbox"][k], ref["bbox"][k]
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-2, k  # percent


def test_groups_fall_back_to_gt_json_counts(tmp_path, registered):
    gt, dets = _make(num_images=8)
    name, _, id_map = registered(gt)
    out = _run_evaluator(name, gt, dets, ("bbox",), None, id_map, class_stats=None)
    keys = [k for k in out["bbox"] if k.startswith("AP[")]
    assert keys and keys[-1] == "AP[1000,inf)"


def _feed(ev, dets, id_map):
    ev.reset()
    for k, d in dets.items():
        ev.process(
            [{"image_id": k}], [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map)}]
        )
    return ev.evaluate()


def test_group_edges_from_the_config(tmp_path, registered):
    """MODEL.LT.GROUP_EDGES reaches both evaluators through LTTrainer.build_evaluator; group APs
    against lvis-api / pycocotools restricted to each group's categories."""

    from lt_detectron.engine import LTTrainer

    gt, dets = _make(num_images=10)
    cfg = lt_cfg()
    cfg.DATASETS.TRAIN = ()  # no training data: counts from the GT json's categories
    cfg.MODEL.LT.GROUP_EDGES = [100, 2000]
    counts = {c["id"]: c["instance_count"] for c in gt["categories"]}
    groups = {"[0,100)": (0, 100), "[100,2000)": (100, 2000), "[2000,inf)": (2000, float("inf"))}
    results = [
        {k: v for k, v in r.items() if k != "segmentation"} for r in detections_to_results(dets)
    ]
    name, gt_path, id_map = registered(gt)
    out = _feed(LTTrainer.build_evaluator(cfg, name, str(tmp_path / "lvis")), dets, id_map)["bbox"]
    assert [k for k in out if k.startswith("AP[")] == ["AP" + g for g in groups]
    for g, (lo, hi) in groups.items():
        ref = _lvis_api(
            gt_path, results, "bbox", cat_ids=[c for c, n in counts.items() if lo <= n < hi]
        )["AP"]
        assert abs(out["AP" + g] / 100 - ref) <= 1e-4, g
    coco_name, _, _ = registered(gt, evaluator_type="coco_lt")
    out = _feed(LTTrainer.build_evaluator(cfg, coco_name, str(tmp_path / "coco")), dets, id_map)[
        "bbox"
    ]
    assert [k for k in out if k in ("AP1", "AP2", "AP3", "AP4")] == ["AP1", "AP2", "AP3"]
    cfg.MODEL.LT.GROUP_EDGES = [100, 10]
    with pytest.raises(ValueError, match=r"MODEL.LT.GROUP_EDGES.*strictly increasing"):
        LTTrainer.build_evaluator(cfg, name, str(tmp_path / "lvis"))


def test_no_predictions(tmp_path, registered):
    gt, _ = _make(num_images=4)
    name, _, _ = registered(gt)
    ev = LTLVISEvaluator(name, ("bbox",), distributed=False)
    ev.reset()
    res = ev.evaluate()["bbox"]
    assert res["AP"] == 0.0


def test_clear_errors(tmp_path):
    from detectron2.data import MetadataCatalog

    name = f"lt_test_{uuid.uuid4().hex[:8]}"
    try:
        MetadataCatalog.get(name).set(json_file=str(tmp_path / "missing.json"))
        with pytest.raises(FileNotFoundError, match="missing.json"):
            LTLVISEvaluator(name)
    finally:
        MetadataCatalog.remove(name)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    name2 = f"lt_test_{uuid.uuid4().hex[:8]}"
    try:
        MetadataCatalog.get(name2).set(json_file=str(bad))
        with pytest.raises(ValueError, match="not valid JSON"):
            LTLVISEvaluator(name2)
    finally:
        MetadataCatalog.remove(name2)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": []}))
    name3 = f"lt_test_{uuid.uuid4().hex[:8]}"
    try:
        MetadataCatalog.get(name3).set(json_file=str(wrong))
        with pytest.raises(ValueError, match="annotations"):
            LTLVISEvaluator(name3)
    finally:
        MetadataCatalog.remove(name3)
    with pytest.raises(ValueError, match="tasks"):
        LTLVISEvaluator("whatever", tasks=("keypoints",))


# ---------------------------------------------------------------- distributed (2 CPU processes)
def _dist_worker(rank, world, init_file, gt, dets, out_json, out_dir):
    import torch.distributed as dist
    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    comm._LOCAL_PROCESS_GROUP = dist.new_group([0, 1])  # detectron2 expects it after init
    ids = sorted(c["id"] for c in gt["categories"])
    name = "lt_test_dist"
    MetadataCatalog.get(name).set(
        json_file=out_json + ".gt.json",
        thing_dataset_id_to_contiguous_id={d: i for i, d in enumerate(ids)},
    )
    id_map = {d: i for i, d in enumerate(ids)}
    all_res = {}
    for variant, directory in (("output_dir", out_dir), ("tempdir", None)):
        ev = LTLVISEvaluator(name, ("bbox",), distributed=True, output_dir=directory)
        ev.reset()
        for k, d in list(dets.items())[rank::world]:
            ev.process(
                [{"image_id": k}], [{"instances": detections_to_instances(d, IMAGE_SIZE, id_map)}]
            )
        res = ev.evaluate()
        if rank != 0:
            assert res == {}
        all_res[variant] = res
    if rank == 0:
        with open(out_json, "w") as f:
            json.dump(all_res, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_two_processes_equals_single(tmp_path, registered):
    """2 gloo CPU processes, each writes its predictions to a file; rank 0 reads them."""
    import torch.multiprocessing as mp

    gt, dets = _make(num_images=12)
    name, gt_path, id_map = registered(gt)
    single = _run_evaluator(name, gt, dets, ("bbox",), None, id_map)
    out_json = str(tmp_path / "dist.json")
    with open(out_json + ".gt.json", "w") as f:
        json.dump(gt, f)
    out_dir = str(tmp_path / "dist_out")
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), gt, dets, out_json, out_dir),
        nprocs=2,
        join=True,
    )
    with open(out_json) as f:
        dist_res = json.load(f)
    for variant in ("output_dir", "tempdir"):
        for k, v in single["bbox"].items():
            w = dist_res[variant]["bbox"][k]
            assert (np.isnan(v) and (w is None or np.isnan(w))) or abs(v - w) <= 1e-9, (variant, k)
    # the per-rank transfer files are removed; the standard results file stays
    assert not (tmp_path / "dist_out" / "lt_predictions").exists()
    with open(tmp_path / "dist_out" / "lvis_instances_results.json") as f:
        assert len(json.load(f)) == sum(min(300, len(d["scores"])) for d in dets.values())
    # the ranks' streamed parts joined in rank order = one process given the images in that order
    keys = list(dets)
    in_rank_order = {k: dets[k] for k in keys[0::2] + keys[1::2]}
    _run_evaluator(name, gt, in_rank_order, ("bbox",), str(tmp_path / "one"), id_map)
    one = (tmp_path / "one" / "lvis_instances_results.json").read_bytes()
    assert (tmp_path / "dist_out" / "lvis_instances_results.json").read_bytes() == one


@pytest.mark.parametrize("duplicate_names", [False, True])
def test_per_class_sums_equal_the_precision_array(tmp_path, duplicate_names):
    """hotcoco's per-category AP read as (sums, counts) gives the per-category and group AP of the
    (T, R, K, A) precision array (mean of the valid entries; classes without GT excluded); with
    names that are not unique the evaluator falls back to the array."""
    import hotcoco

    from lt_detectron.evaluation.common import category_sums, per_category_ap, precision_ap
    from lt_detectron.evaluation.lvis_evaluation import (
        _sums_from_per_class,
        evaluate_lvis_predictions,
    )

    gt, dets = _make(num_images=16)
    if duplicate_names:
        gt["categories"][1]["name"] = gt["categories"][0]["name"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    mat = np.array(
        [
            [d["image_id"], *d["bbox"], d["score"], d["category_id"]]
            for d in detections_to_results(dets)
        ],
        np.float64,
    )
    G = hotcoco.COCO(str(path))
    E = hotcoco.COCOeval(G, G.load_res(mat).cap_detections_per_image(300), "bbox", lvis_style=True)
    E.params.max_dets = [300]
    E.run()
    cat_ids = list(E.params.cat_ids)
    arr = np.asarray(E.eval["precision"])[..., -1]
    sums = _sums_from_per_class(E.get_results(per_class=True), cat_ids, G.cats, 10, 101)
    _, precision, _ = evaluate_lvis_predictions(str(path), mat, None, "bbox")
    if duplicate_names:
        assert sums is None
        assert isinstance(precision, np.ndarray) and precision.shape == arr.shape
        return
    ref_sums, ref_counts = category_sums(arr)
    empty = [cat_ids.index(gt["categories"][i]["id"]) for i in EMPTY]
    assert (sums[1][empty] == 0).all() and (ref_counts[empty] == 0).all()
    np.testing.assert_array_equal(sums[1], ref_counts)
    np.testing.assert_allclose(sums[0], ref_sums, rtol=0, atol=1e-9)
    np.testing.assert_allclose(per_category_ap(sums), per_category_ap(arr), rtol=0, atol=1e-12)
    groups = [[0, 3, 6], list(range(1, len(cat_ids), 2)), empty]
    for idx in groups:
        a, b = precision_ap(sums, idx), precision_ap(arr, idx)
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-12
    assert precision[1] is not None and np.array_equal(precision[1], sums[1])


def _edge_masks(h, w):
    """Masks that hit every branch of the strip encoder: empty, full, borders, single pixels."""
    ms = []
    for fill in [(), "all", ((0, 0),), ((h - 1, w - 1),), ((0, w - 1),), ((h - 1, 0),)]:
        m = np.zeros((h, w), np.uint8)
        if fill == "all":
            m[:] = 1
        else:
            for y, x in fill:
                m[y, x] = 1
        ms.append(m)
    m = np.zeros((h, w), np.uint8)
    m[:, 0] = 1  # whole left column
    ms.append(m)
    m = np.zeros((h, w), np.uint8)
    m[:, w - 1] = 1  # whole right column
    ms.append(m)
    m = np.zeros((h, w), np.uint8)
    m[h // 3 :, w // 4 : w // 2 + 1] = 1  # a block ending at the bottom row
    ms.append(m)
    return ms


@pytest.mark.parametrize("h,w", [(7, 9), (5, 1), (1, 6), (1, 1), (32, 48)])
def test_encode_masks_equals_pycocotools(h, w):
    import pycocotools.mask as mask_util

    from lt_detectron.evaluation.common import encode_masks

    rng = np.random.default_rng(h * 100 + w)
    masks = _edge_masks(h, w)
    masks += [(rng.random((h, w)) < p).astype(np.uint8) for p in (0.05, 0.5, 0.95)]
    blob = np.zeros((h, w), np.uint8)  # a detection-like blob off the borders
    blob[h // 4 : max(h // 4 + 1, 3 * h // 4), w // 3 : max(w // 3 + 1, 2 * w // 3)] = 1
    masks.append(blob)
    m = np.stack(masks)
    expected = mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0)))
    got = encode_masks(m)
    assert [r["counts"] for r in got] == [r["counts"] for r in expected]
    assert all(r["size"] == [h, w] for r in got)
    np.testing.assert_array_equal(mask_util.decode(got).transpose(2, 0, 1), m)
    assert encode_masks(np.zeros((0, h, w), np.uint8)) == []


def test_final_metrics_once_hotcoco_prints_no_second_summary(tmp_path, registered, capfd):
    """Issue 22 §4: the metrics appear once per task. hotcoco's ``summarize`` prints its 0-1
    summary from Rust, on file descriptor 1 (past ``redirect_stdout``); the evaluator must not."""
    gt, dets = _make(num_images=6)
    name, _, id_map = registered(gt)
    # as under train_net: detectron2's setup_logger makes its loggers DEBUG-enabled
    log = logging.getLogger("lt_detectron")
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        res = _run_evaluator(name, gt, dets, ("bbox",), None, id_map, backend="hotcoco")
    finally:
        log.setLevel(level)
    out = capfd.readouterr().out
    assert res["bbox"]["AP"] > 0  # it did evaluate
    assert "AP@" not in out and " AP = " not in out and "AR@300" not in out, out
