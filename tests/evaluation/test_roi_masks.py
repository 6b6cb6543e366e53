"""encode_roi_masks: byte-equal to pycocotools' encoding of Detectron2-pasted masks; the evaluator's
ROI-level path gives the metrics of the full-image path and of lvis-api."""

import copy
import json
import logging
import threading
import uuid

import numpy as np
import pytest
import torch
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances, ROIMasks
from pycocotools import mask as mask_util

from lt_detectron.compat import ensure_lvis_numpy_compat
from lt_detectron.evaluation import LTLVISEvaluator, encode_roi_masks
from lt_detectron.evaluation.roi_masks import compiled_encoder
from lt_detectron.evaluation.roi_masks_numpy import rle_counts_to_strings
from lt_detectron.utils.testing import make_detections, make_lvis_like_gt, make_roi_masks


def _pasted_rles(masks, boxes, hw):
    """The reference: Detectron2's pasted bitmaps, encoded by pycocotools."""
    bit = paste_masks_in_image(torch.as_tensor(masks), torch.as_tensor(boxes), hw, threshold=0.5)
    enc = mask_util.encode(np.asfortranarray(bit.numpy().astype(np.uint8).transpose(1, 2, 0)))
    return [{"size": tuple(r["size"]), "counts": r["counts"].decode()} for r in enc]


# both implementations: the compiled kernels (where built, as in CI) and the NumPy path
IMPLEMENTATIONS = [
    pytest.param(
        True,
        id="compiled",
        marks=pytest.mark.skipif(not compiled_encoder(), reason="kernels not built"),
    ),
    pytest.param(False, id="numpy"),
]


def _boxes(rng, n, h, w, lo=0.02, hi_factor=3.0):
    """Boxes of sides from sub-pixel to a few times the image, many crossing or touching the
    borders, each overlapping the image (Detectron2 cannot paste a box wholly outside it)."""
    x0 = rng.uniform(-w, w - 0.01, n)
    y0 = rng.uniform(-h, h - 0.01, n)
    x1 = np.maximum(x0 + np.exp(rng.uniform(np.log(lo), np.log(hi_factor * w), n)), 0.01)
    y1 = np.maximum(y0 + np.exp(rng.uniform(np.log(lo), np.log(hi_factor * h), n)), 0.01)
    b = np.stack([x0, y0, x1, y1], 1)
    touch = rng.random(n) < 0.2  # exactly on the borders
    b[touch] = np.clip(b[touch], 0, [w, h, w, h])
    return b.astype(np.float32)


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
@pytest.mark.parametrize("seed", range(6))
def test_roi_rles_byte_equal_pasted(seed, compiled):
    """Smooth blobs and noise, masks of 7/14/28, non-square images, empty masks, tiny/huge boxes."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(3, 90)), int(rng.integers(3, 90))
    m = int((7, 14, 28)[seed % 3])
    n = 80
    masks = make_roi_masks(n, m, seed=seed, noise=0.05)
    masks[:20] = rng.random((20, m, m))  # rough: many changes per column
    masks[20:25] = 0.0  # empty
    masks[25:28] = 1.0  # full boxes
    boxes = _boxes(rng, n, h, w)
    ours = encode_roi_masks(
        torch.from_numpy(masks), torch.from_numpy(boxes), (h, w), compiled=compiled
    )
    assert ours == _pasted_rles(masks, boxes, (h, w))


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_roi_rles_byte_equal_pasted_at_the_threshold(compiled):
    """Values on the threshold itself (0.5, binary masks) and a box of exactly whole pixels: the
    cases float rounding would decide, settled by grid_sample itself."""
    rng = np.random.default_rng(7)
    h, w = 40, 57
    masks = np.concatenate(
        [
            np.full((10, 14, 14), 0.5, np.float32),
            (rng.random((10, 14, 14)) > 0.5).astype(np.float32),
            np.float32(0.5) + rng.choice([-1e-7, 0.0, 6e-8], (10, 14, 14)).astype(np.float32),
        ]
    )
    boxes = _boxes(rng, 30, h, w)
    boxes[:5] = np.round(boxes[:5])
    boxes[:5, 2:] = np.maximum(boxes[:5, 2:], boxes[:5, :2] + 1)
    ours = encode_roi_masks(masks[:, None], boxes, (h, w), compiled=compiled)  # (N, 1, M, M)
    assert ours == _pasted_rles(masks, boxes, (h, w))


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_roi_rles_change_just_past_the_last_region_row(compiled):
    """A change of class just below the image's last row (the box goes on below the image): the last
    row's float64 value is a hair under the threshold, grid_sample's float32 value on or over it. The
    kernel once skipped such a change without looking at the row beside it (found by a stress run)."""
    from lt_detectron.evaluation.roi_mask_sampling import sampling_grid, source_coordinate

    h, w, m = 20, 6, 14
    box = np.array([0.0, 0.0, 6.0, 31.3], np.float32)  # rows below 20 are outside the image
    iy_last = source_coordinate(sampling_grid(np.array([h - 1]), box[1], box[3]), m)[0]
    # masks constant across, a ramp down through the threshold just below the last row's iy
    rows = 0.5 + 0.05 * (np.arange(m)[None] - iy_last) - np.linspace(-3e-5, 3e-5, 4001)[:, None]
    masks = np.repeat(rows.astype(np.float32)[:, :, None], m, 2)
    grid = torch.tensor([0.0, float(sampling_grid(np.array([h - 1]), box[1], box[3])[0])])
    v32 = torch.nn.functional.grid_sample(
        torch.from_numpy(masks)[:, None], grid.expand(len(masks), 1, 1, 2), align_corners=False
    )[:, 0, 0, 0].numpy()
    k, t = int(np.floor(iy_last)), iy_last - np.floor(iy_last)
    v64 = (1 - t) * masks[:, k, 0].astype(np.float64) + t * masks[:, k + 1, 0]
    flips = np.flatnonzero((v64 < 0.5) & (v32 >= 0.5))
    assert len(flips)  # the case exists: float32 decides the last row
    picked = masks[np.concatenate([flips, flips + 1, flips - 1])]
    boxes = np.repeat(box[None], len(picked), 0)
    assert encode_roi_masks(picked, boxes, (h, w), compiled=compiled) == _pasted_rles(
        picked, boxes, (h, w)
    )


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_roi_rles_per_mask_image_sizes(compiled):
    rng = np.random.default_rng(3)
    masks = make_roi_masks(12, 28, seed=3)
    sizes = [(30, 50)] * 6 + [(64, 20)] * 6
    boxes = np.concatenate([_boxes(rng, 6, 30, 50), _boxes(rng, 6, 64, 20)])
    ours = encode_roi_masks(masks, boxes, sizes, compiled=compiled)
    ref = _pasted_rles(masks[:6], boxes[:6], (30, 50)) + _pasted_rles(
        masks[6:], boxes[6:], (64, 20)
    )
    assert ours == ref


def test_roi_rles_bad_input():
    with pytest.raises(ValueError, match=r"\(N, M, M\)"):
        encode_roi_masks(np.zeros((3, 28, 14)), np.zeros((3, 4)), (10, 10))
    with pytest.raises(ValueError, match="boxes"):
        encode_roi_masks(np.zeros((3, 28, 28)), np.zeros((2, 4)), (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        encode_roi_masks(np.zeros((3, 28, 28)), np.zeros((3, 4)), [(10, 10)] * 2)
    assert encode_roi_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (10, 10)) == []


@pytest.mark.skipif(not compiled_encoder(), reason="kernels not built")
def test_compiled_and_numpy_paths_give_the_same_strings_on_lvis_like_masks():
    """The benchmark's kind of data (smooth blobs, 640 x 480, boxes of 6 to 360 px, many columns
    that grid_sample settles): both implementations and Detectron2's pasted masks agree."""
    rng = np.random.default_rng(11)
    masks = make_roi_masks(300, 28, seed=11)
    side = np.exp(rng.uniform(np.log(6), np.log(360), (300, 2)))
    x0 = rng.uniform(-20, 640, 300)
    y0 = rng.uniform(-20, 480, 300)
    boxes = np.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1).astype(np.float32)
    boxes = np.clip(boxes, 0, [640, 480, 640, 480]).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    ref = _pasted_rles(masks, boxes, (480, 640))
    assert encode_roi_masks(masks, boxes, (480, 640), compiled=True) == ref
    assert encode_roi_masks(masks, boxes, (480, 640), compiled=False) == ref


def _joined(parts, bounds):
    """The kernel's outputs for parts of the masks joined as one output for all of them."""
    flips = [f for f, _ in parts]
    sizes = np.cumsum([0] + [len(f[0]) for f in flips[:-1]])
    return (
        np.concatenate([f[0] for f in flips]),
        np.concatenate([f[1] for f in flips]),
        np.concatenate([f[2] + s for f, s in zip(flips, bounds)]),
        np.concatenate([f[3] for f in flips]),
        np.concatenate([f[4] + z for f, z in zip(flips, sizes)]),
    )


@pytest.mark.skipif(not compiled_encoder(), reason="kernels not built")
def test_kernel_on_threads_merges_as_on_one():
    """The kernel over 1, 2 or 3 parts of the masks (threads) gives the very same changes, with
    columns left to grid_sample (masks at the threshold) in every part; finish_stage gives the
    pasted masks' RLEs from the parts as from one."""
    from lt_detectron.evaluation import roi_masks
    from lt_detectron.evaluation.roi_mask_sampling import roi_mask_regions

    rng = np.random.default_rng(2)
    masks = make_roi_masks(150, 28, seed=2, noise=0.05)
    masks[::7] = 0.5  # every column of these is settled by grid_sample
    boxes = _boxes(rng, 150, 60, 80)
    boxes[::7] = [10.5, 8.25, 50.0, 40.75]  # (most random boxes here sample only zeros)
    h, w = np.full(150, 60), np.full(150, 80)
    regions = roi_mask_regions(boxes, h, w)
    (one,), _ = roi_masks._column_flips(masks, boxes, regions, h, w, 0.5, 1)
    assert len(one[0][2]) > 0
    want = roi_masks.finish_stage(masks, boxes, regions, h, w, 0.5, [one], [0, 150])
    assert want == _pasted_rles(masks, boxes, (60, 80))
    for threads in (2, 3):
        parts, bounds = roi_masks._column_flips(masks, boxes, regions, h, w, 0.5, threads)
        assert len(parts) == threads and all(len(f[2]) for f, _ in parts)  # grid_sample in each
        joined = _joined(parts, bounds)
        for name, a, b in zip(("pos", "counts", "mask", "col", "at"), one[0], joined):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert roi_masks.finish_stage(masks, boxes, regions, h, w, 0.5, parts, bounds) == want


@pytest.mark.skipif(not compiled_encoder(), reason="kernels not built")
def test_compiled_kernel_rle_strings_match_pycocotools():
    """The kernel's compressed counts from change positions against pycocotools' own strings,
    with changes that cancel (a column ending on the last row, the next starting on row 0) and a
    change at the very end of the image."""
    from lt_detectron.evaluation import _coco_rle

    rng = np.random.default_rng(1)
    pos, counts, area, ref = [], [], [], []
    for _ in range(100):
        h, w = int(rng.integers(1, 400)), int(rng.integers(1, 300))
        bits = (rng.random(h * w) < rng.uniform(0, 0.2)).cumsum() % 2  # runs, column-major
        flips = np.flatnonzero(np.diff(np.concatenate([[0], bits])))
        extra = int(rng.integers(1, h * w + 1))
        if extra not in flips and rng.random() < 0.3:  # a pair that cancels, as between columns
            flips = np.sort(np.concatenate([flips, [extra, extra]]))
        if bits[-1] and rng.random() < 0.5:
            flips = np.append(flips, h * w)  # the end of the image: no change
        pos.append(flips)
        counts.append(len(flips))
        area.append(h * w)
        bitmap = np.asfortranarray(bits.reshape(w, h).T.astype(np.uint8))
        ref.append(mask_util.encode(bitmap)["counts"].decode())
    got = _coco_rle.rle_strings(
        np.concatenate(pos).astype(np.int64), np.array(counts, np.int64), np.array(area, np.int64)
    )
    assert got == ref
    with pytest.raises(ValueError, match="changes"):
        _coco_rle.rle_strings(
            np.zeros(3, np.int64), np.array([2], np.int64), np.array([9], np.int64)
        )


def test_masks_larger_than_the_kernels_take_use_the_numpy_path():
    """M = 70 (> 62, the kernels' limit): still byte-equal, through the NumPy path."""
    rng = np.random.default_rng(4)
    masks = make_roi_masks(6, 70, seed=4)
    boxes = _boxes(rng, 6, 40, 60)
    assert encode_roi_masks(masks, boxes, (40, 60)) == _pasted_rles(masks, boxes, (40, 60))
    if compiled_encoder():
        with pytest.raises(ValueError, match="side <= 62"):
            encode_roi_masks(masks, boxes, (40, 60), compiled=True)


def test_rle_dicts_are_not_tracked_by_the_garbage_collector():
    """Sizes are tuples (shared per image size): the dicts hold no tracked container, so the
    collector never rescans the millions of them an LVIS evaluation keeps."""
    import gc

    rles = encode_roi_masks(
        make_roi_masks(5, 28, seed=1), _boxes(np.random.default_rng(1), 5, 30, 40), (30, 40)
    )
    gc.collect()
    assert not any(gc.is_tracked(r) for r in rles)
    assert all(r["size"] == (30, 40) for r in rles)


def test_rle_counts_to_strings_matches_pycocotools():
    """The compressed counts (differences two back, 5-bit groups) against pycocotools' own."""
    rng = np.random.default_rng(0)
    objs, counts, lengths = [], [], []
    for k in range(200):
        h, w = int(rng.integers(1, 3000)), int(rng.integers(1, 400))
        cuts = np.sort(rng.choice(h * w, size=int(rng.integers(0, min(h * w, 60))), replace=False))
        c = np.diff(np.concatenate([[0], cuts, [h * w]])).tolist()
        if k % 5 == 0 and len(c) > 1:
            c[0] = 0  # starts with ones
        objs.append({"size": [h, w], "counts": c})
        counts += c
        lengths.append(len(c))
    ref = [r["counts"].decode() for r in mask_util.frPyObjects(objs, 0, 0)]
    assert rle_counts_to_strings(np.array(counts), np.array(lengths)) == ref


# ---------------------------------------------------------------- the evaluator's ROI-level path

IMAGE_HW = (96, 128)


@pytest.fixture
def lvis_data(tmp_path):
    from detectron2.data import MetadataCatalog

    gt = make_lvis_like_gt(10, seed=2, with_masks=True, image_size=IMAGE_HW)
    gt["categories"] = [c for c in gt["categories"] if c["id"] <= 60] or gt["categories"]
    keep = {c["id"] for c in gt["categories"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] in keep]
    for im in gt["images"]:
        im["neg_category_ids"] = [c for c in im["neg_category_ids"] if c in keep]
        im["not_exhaustive_category_ids"] = [
            c for c in im["not_exhaustive_category_ids"] if c in keep
        ]
    name = f"lt_roi_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = sorted(keep)
    id_map = {d: i for i, d in enumerate(ids)}
    MetadataCatalog.get(name).set(
        json_file=str(path),
        thing_classes=[str(i) for i in ids],
        thing_dataset_id_to_contiguous_id=id_map,
    )
    yield name, str(path), gt, id_map
    MetadataCatalog.remove(name)


def _roi_outputs(gt, id_map, seed=5):
    """Per image: detections with ROI-level masks (some crossing the borders)."""
    cats = [c for c in gt["categories"]]
    dets = make_detections({**gt, "categories": cats}, 60, seed=seed)
    out = {}
    for k, (img_id, d) in enumerate(dets.items()):
        n = len(d["boxes"])
        rng = np.random.default_rng(seed + k)
        boxes = d["boxes"] + rng.normal(0, 4, d["boxes"].shape).astype(np.float32)
        boxes = np.clip(boxes, 0, [IMAGE_HW[1], IMAGE_HW[0]] * 2).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        out[img_id] = {
            "boxes": boxes,
            "scores": d["scores"],
            "classes": np.array([id_map[int(c)] for c in d["category_ids"]]),
            "masks": make_roi_masks(n, 28, seed=seed + k),
        }
    return out


def _instances(d, roi: bool):
    inst = Instances(IMAGE_HW)
    inst.pred_boxes = Boxes(torch.from_numpy(d["boxes"]))
    inst.scores = torch.from_numpy(d["scores"])
    inst.pred_classes = torch.from_numpy(d["classes"])
    m = torch.from_numpy(d["masks"])
    if roi:
        inst.pred_masks = ROIMasks(m)
    else:
        inst.pred_masks = paste_masks_in_image(m, inst.pred_boxes.tensor, IMAGE_HW, 0.5)
    return inst


def _evaluate(name, outputs, roi, out_dir):
    ev = LTLVISEvaluator(name, ("segm",), distributed=False, output_dir=str(out_dir))
    ev.reset()
    for img_id, d in outputs.items():
        ev.process([{"image_id": img_id}], [{"instances": _instances(d, roi)}])
    return ev.evaluate()


def _same(a, b):
    """Equal nested metrics, nan equal to nan."""
    return list(a) == list(b) and all(
        list(a[t]) == list(b[t])
        and np.array_equal(list(a[t].values()), list(b[t].values()), equal_nan=True)
        for t in a
    )


def test_roi_level_evaluation_matches_lvis_api(lvis_data, tmp_path):
    from lvis import LVIS, LVISEval, LVISResults

    name, path, gt, id_map = lvis_data
    outputs = _roi_outputs(gt, id_map)
    roi = _evaluate(name, outputs, True, tmp_path / "roi")
    full = _evaluate(name, outputs, False, tmp_path / "full")
    assert _same(roi, full)
    # lvis-api on pycocotools' RLEs of the pasted masks
    inv = {i: d for d, i in id_map.items()}
    results = []
    for img_id, d in outputs.items():
        rles = _pasted_rles(d["masks"], d["boxes"], IMAGE_HW)
        for k in range(len(rles)):
            results.append(
                {
                    "image_id": img_id,
                    "category_id": inv[int(d["classes"][k])],
                    "segmentation": rles[k],
                    "score": float(d["scores"][k]),
                }
            )
    ensure_lvis_numpy_compat()
    logging.getLogger("lvis").setLevel(logging.WARNING)
    lv = LVIS(path)
    ev = LVISEval(lv, LVISResults(lv, copy.deepcopy(results), max_dets=300), "segm")
    ev.run()
    ref = {k: float(v) for k, v in ev.results.items()}
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        r, o = ref[k], roi["segm"][k] / 100.0
        assert np.isnan(o) if r < 0 else abs(o - r) <= 1e-6, (k, o, r)
    assert roi["segm"]["AP"] > 0  # the detections do match the ground truth


def test_roi_level_masks_in_results_json(lvis_data, tmp_path):
    """The results json carries the same RLEs from both paths."""
    name, _, gt, id_map = lvis_data
    outputs = _roi_outputs(gt, id_map, seed=9)
    _evaluate(name, outputs, True, tmp_path / "roi")
    _evaluate(name, outputs, False, tmp_path / "full")
    a = json.loads((tmp_path / "roi" / "lvis_instances_results.json").read_text())
    b = json.loads((tmp_path / "full" / "lvis_instances_results.json").read_text())
    assert a == b and all("segmentation" in r for r in a)


@pytest.mark.skipif(not compiled_encoder(), reason="kernels not built")
def test_evaluator_keeps_one_encoder_thread_until_evaluate(lvis_data, tmp_path):
    """process() hands each image's kernel to one worker thread kept from image to image and
    finishes the image before it meanwhile; evaluate() ends the worker, and the RLEs are those of
    the pasted masks even where the caller overwrites its mask tensors after process()."""
    name, _, gt, id_map = lvis_data
    rng = np.random.default_rng(4)
    images = [
        {
            "boxes": _boxes(rng, 300, *IMAGE_HW),
            "scores": rng.random(300).astype(np.float32),
            "classes": rng.integers(0, len(id_map), 300),
            "masks": make_roi_masks(300, 28, seed=k),
        }
        for k in range(2)
    ]
    ids = [img["id"] for img in gt["images"][:2]]

    def encoder_threads():
        return [t for t in threading.enumerate() if t.name.startswith("lt_mask_encoder")]

    ev = LTLVISEvaluator(name, ("segm",), distributed=False, output_dir=str(tmp_path))
    for _ in range(2):  # evaluate() ends the worker; reset() and process() start a new one
        ev.reset()
        for img_id, d in zip(ids, images):
            inst = _instances(d, True)
            inst.pred_masks = ROIMasks(torch.from_numpy(d["masks"].copy()))
            inst.pred_boxes = Boxes(torch.from_numpy(d["boxes"].copy()))
            ev.process([{"image_id": img_id}], [{"instances": inst}])
            inst.pred_masks.tensor.fill_(1.0)  # a caller reusing its buffers
            inst.pred_boxes.tensor.fill_(0.0)
            assert len(encoder_threads()) == 1
        ev.evaluate()
        assert not encoder_threads()
    rows = json.loads((tmp_path / "lvis_instances_results.json").read_text())
    for img_id, d in zip(ids, images):
        got = [r["segmentation"]["counts"] for r in rows if r["image_id"] == img_id]
        assert got == [r["counts"] for r in _pasted_rles(d["masks"], d["boxes"], IMAGE_HW)]


def test_evaluator_accepts_roi_level_and_full_image_masks():
    """ROIMasks and (N, 1, M, M) tensors are ROI-level; (N, H, W) bitmaps are full-image."""
    from lt_detectron.evaluation.common import roi_level_masks

    t = torch.rand(3, 28, 28)
    assert roi_level_masks(ROIMasks(t)) is t
    assert torch.equal(roi_level_masks(t[:, None]), t)
    assert roi_level_masks(torch.zeros(3, 40, 50, dtype=torch.bool)) is None
