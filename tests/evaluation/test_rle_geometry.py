"""mask_boxes_and_areas: the boxes and areas of pycocotools' toBbox and area, from the compiled kernel
(_coco_rle.pyx) and from the pycocotools fallback alike."""

import numpy as np
import pytest
from pycocotools import mask as mask_util

from lt_detectron.evaluation import common

KERNEL = pytest.param(
    True,
    id="kernel",
    marks=pytest.mark.skipif(common._coco_rle is None, reason="kernel not built"),
)


@pytest.fixture(params=[KERNEL, pytest.param(False, id="pycocotools")])
def geometry(request, monkeypatch):
    if not request.param:
        monkeypatch.setattr(common, "_coco_rle", None)
    return common.mask_boxes_and_areas


def _reference(rles):
    boxes = np.asarray(mask_util.toBbox(rles), np.float64).reshape(-1, 4)
    areas = np.asarray([float(mask_util.area(r)) for r in rles])
    return boxes, areas


def _masks(seed):
    """Empty, full, random, one or two rectangles (a run of ones across columns, a run ending on the
    last row), single rows and columns, in images from 1 x 1 to tall and wide."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in [(1, 1), (1, 7), (9, 1), (7, 9), (40, 33), (230, 170)]:
        for k in range(24):
            kind = k % 6
            m = np.zeros((h, w), np.uint8)
            if kind == 1:
                m[:] = 1
            elif kind == 2:
                m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
            elif kind >= 3:
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                m[y0 : y0 + int(rng.integers(1, h + 1)), x0 : x0 + int(rng.integers(1, w + 1))] = 1
                if kind == 4:
                    m[int(rng.integers(0, h)) :, int(rng.integers(0, w))] = 1
                if kind == 5:
                    m[-1, :] = 1  # runs of ones that cross columns
            out.append(m)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_boxes_and_areas_equal_pycocotools(geometry, seed):
    rles = []
    for i, m in enumerate(_masks(seed)):
        r = mask_util.encode(np.asfortranarray(m))
        counts = r["counts"].decode() if i % 2 else r["counts"]  # text and bytes
        rles.append({"size": tuple(r["size"]) if i % 3 else r["size"], "counts": counts})
    boxes, areas = geometry(rles)
    ref_boxes, ref_areas = _reference(rles)
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(areas, ref_areas)
    # by hand: a mask's area is its pixel count, its box the span of its pixels (here one run of ones
    # goes on from column 1 into column 2)
    m = np.zeros((5, 4), np.uint8)
    m[3:, 1] = 1
    m[:2, 2] = 1
    m[2, 3] = 1
    b, a = geometry([mask_util.encode(np.asfortranarray(m))])
    assert a.tolist() == [5.0] and b.tolist() == [[1.0, 0.0, 3.0, 5.0]]


def test_long_runs_and_many_masks(geometry):
    """Runs longer than a column and of many columns; more than 255 masks in one call."""
    rng = np.random.default_rng(1)
    ms = []
    for _ in range(300):
        m = np.zeros((17, 500), np.uint8)
        a, b = sorted(rng.integers(0, m.size, 2))
        m.T.reshape(-1)[a:b] = 1  # column-major run from pixel a to b
        ms.append(m)
    rles = [mask_util.encode(np.asfortranarray(m)) for m in ms]
    boxes, areas = geometry(rles)
    ref_boxes, ref_areas = _reference(rles)
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(areas, ref_areas)
    np.testing.assert_array_equal(areas, [m.sum() for m in ms])


def test_what_the_kernel_does_not_read_goes_to_pycocotools():
    """An image of height 0 (its empty counts string): the kernel declines, pycocotools reads the
    whole list, with the same values for the other masks."""
    m = np.zeros((6, 5), np.uint8)
    m[2:4, 1:3] = 1
    rles = [mask_util.encode(np.asfortranarray(m)), {"size": [0, 5], "counts": b""}]
    boxes, areas = common.mask_boxes_and_areas(rles)
    assert boxes.tolist() == [[1.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    assert areas.tolist() == [4.0, 0.0]


@pytest.mark.skipif(common._coco_rle is None, reason="kernel not built")
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"size": [4, 4], "counts": "0P"}, "not a COCO compressed counts string"),  # 'P' goes on
        ({"size": [4, 4], "counts": "0~"}, "not a COCO compressed counts string"),  # out of range
        ({"size": [4, 4], "counts": [16]}, "list counts, not a string"),
        ({"counts": "0"}, "not an RLE dict"),
        ({"size": [0, 4], "counts": ""}, "size 0 x 4"),
    ],
)
def test_kernel_names_what_it_cannot_read(bad, match):
    good = mask_util.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
    with pytest.raises(ValueError, match=f"entry 1 .*{match}|entry 1 has {match}"):
        common._coco_rle.rle_geometry([good, bad])


def test_results_without_a_box_get_their_masks_box(tmp_path):
    """load_results_json: a result without ``bbox`` gets its mask's box (lvis-api's rule), through
    mask_boxes_and_areas; one with a ``bbox`` keeps it."""
    import json

    from lt_detectron.evaluation import load_results_json

    masks = _masks(5)[96:102]  # 40 x 33 images: empty, full, random, rectangles
    rles = [mask_util.encode(np.asfortranarray(m)) for m in masks]
    rows = []
    for k, r in enumerate(rles):
        seg = {"size": r["size"], "counts": r["counts"].decode()}
        row = {"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": seg}
        if k == 2:
            row["bbox"] = [1.0, 2.0, 3.0, 4.0]
        rows.append(row)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    dets, _ = load_results_json(str(path))
    want = np.asarray(mask_util.toBbox(rles), np.float64)
    want[2] = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(dets[:, 1:5], want)
